"""Procedural clips for the demo model: one plain shape of one colour moving in one direction.

    make_clip("red", "circle", "right", num_frames=16, height=64, width=64, seed=0)  # (16, 64, 64, 3) uint8
    caption("red", "circle", "right")  # "a red circle moving to the right"

The vocabulary (colours, shapes, directions) is shared by the training script and the
evaluation tracker (scripts/train_demo.py, scripts/eval_demo.py), which is why this lives in
the package and not under scripts/: both import it, and so do the tests. Every word of a
caption is in the tiny tokenizer's word list (videosys/utils/text.py).

Object colours are saturated and backgrounds are near-grey, so a colour never doubles as a
background and a pixel's colour says whether it belongs to the object.
"""

import itertools
import re

import numpy as np

# Saturated object colours, pairwise far apart in RGB so the tracker never confuses two of them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 200),
    "cyan": (30, 210, 220),
}
SHAPES = ("circle", "square", "triangle")
# direction -> unit motion in image coordinates (x to the right, y downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_PHRASES = {"left": "moving to the left", "right": "moving to the right", "up": "moving up", "down": "moving down"}
# Plain near-grey backgrounds (not part of the caption): low saturation, unlike every object colour.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((20, 20, 20), (90, 90, 90), (160, 160, 160), (240, 240, 240),
                                                 (200, 190, 170), (60, 65, 80))

OBJECT_SIZE = 0.25  # object diameter as a fraction of the shorter side (16 px at 64x64)
TRAVEL = 0.5  # distance covered over the clip as a fraction of the side along the motion


def caption(colour: str, shape: str, direction: str) -> str:
    """"a red circle moving to the right"."""
    _check(colour, shape, direction)
    return f"a {colour} {shape} {_PHRASES[direction]}"


def parse_caption(text: str) -> tuple[str, str, str]:
    """(colour, shape, direction) of a caption written by `caption`; other words and characters around
    it are ignored, so a file name such as "a red circle moving up-0" parses."""
    words = re.findall(r"[a-z]+", text.lower())
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    direction = next((w for w in words if w in DIRECTIONS), None)
    if colour is None or shape is None or direction is None:
        raise ValueError(f"not a demo caption (needs a colour, a shape and a direction): {text!r}")
    return colour, shape, direction


def caption_words() -> frozenset[str]:
    """Every word the demo captions use: all the demo model was trained to understand."""
    return frozenset(word for combo in combinations() for word in caption(*combo).split())


def combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, direction), in a fixed order."""
    return list(itertools.product(COLOURS, SHAPES, DIRECTIONS))


def _check(colour: str, shape: str, direction: str) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; choose from {list(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {list(SHAPES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose from {list(DIRECTIONS)}")


def shape_mask(shape: str, cx: float, cy: float, radius: float, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of `shape` centred at (cx, cy) (pixel centres), `radius` = half its size."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if shape == "triangle":  # apex up; half-width grows from 0 at the top to radius at the base
        return (dy >= -radius) & (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
    raise ValueError(f"unknown shape {shape!r}; choose from {list(SHAPES)}")


def make_clip(colour: str, shape: str, direction: str, num_frames: int = 16, height: int = 64, width: int = 64,
              seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: the shape moving at constant speed in `direction`, start point and
    background drawn from `seed`; the object stays wholly inside the frame."""
    _check(colour, shape, direction)
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need num_frames >= 1 and height, width >= 8, got {num_frames}, {height}, {width}")
    rng = np.random.default_rng(seed)
    background = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], dtype=np.uint8)
    radius = OBJECT_SIZE * min(height, width) / 2
    ux, uy = DIRECTIONS[direction]
    travel_x, travel_y = TRAVEL * width * abs(ux), TRAVEL * height * abs(uy)
    # start anywhere that keeps the whole path inside the frame, a pixel clear of the border
    margin = radius + 1
    x0 = rng.uniform(margin, width - margin - travel_x)
    y0 = rng.uniform(margin, height - margin - travel_y)
    if ux < 0:
        x0 += travel_x
    if uy < 0:
        y0 += travel_y
    video = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    video[:] = background
    rgb = np.array(COLOURS[colour], dtype=np.uint8)
    for t in range(num_frames):
        s = t / max(num_frames - 1, 1)
        mask = shape_mask(shape, x0 + ux * travel_x * s, y0 + uy * travel_y * s, radius, height, width)
        video[t][mask] = rgb
    return video


class DemoClips:
    """Seeded clips over every (colour, shape, direction): clip `i` is combination `i % N` with start
    point and background from (seed, i), so the dataset is a deterministic function of `seed`.

    `batch(step, size)` gives the clips and captions of one training step; every combination
    appears equally often (each block of N consecutive indices is a shuffled pass over them).
    """

    def __init__(self, num_frames: int = 16, height: int = 64, width: int = 64, seed: int = 0):
        self.num_frames, self.height, self.width, self.seed = num_frames, height, width, seed
        self.combos = combinations()

    def __len__(self) -> int:
        return len(self.combos)

    def item(self, index: int) -> tuple[np.ndarray, str, tuple[str, str, str]]:
        epoch, offset = divmod(index, len(self.combos))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.combos))
        combo = self.combos[order[offset]]
        # SeedSequence spreads (seed, index) into a well-mixed integer for the clip
        clip_seed = int(np.random.SeedSequence([self.seed, index, 1]).generate_state(1)[0])
        clip = make_clip(*combo, num_frames=self.num_frames, height=self.height, width=self.width, seed=clip_seed)
        return clip, caption(*combo), combo

    def batch(self, step: int, size: int) -> tuple[np.ndarray, list[str]]:
        """(size, T, H, W, 3) uint8 clips and their captions for training step `step`."""
        items = [self.item(step * size + i) for i in range(size)]
        return np.stack([clip for clip, _, _ in items]), [text for _, text, _ in items]
