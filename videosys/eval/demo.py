"""The demo model's prompt accuracy: does a video show the colour and the motion its prompt asked for?

A colour-centroid tracker: each pixel is labelled with the nearest of the demo palette's
colours or the frame's background (the median of its border pixels), and a pixel too far
from all of them is left unlabelled. The video's colour is the palette colour with the most
pixels over all frames; its direction is the dominant axis and sign of the least-squares
slope of that colour's centroid over time. Prompts are the demo captions
(videosys/utils/demo_data.py); a file name is parsed as one ("a red circle moving up-0.mp4").
Command line: scripts/eval_demo.py.
"""

import glob
import os

import numpy as np

from videosys.utils import demo_data

MAX_DISTANCE = 110.0  # RGB distance beyond which a pixel belongs to no palette colour (blur, artefacts)
MIN_PIXELS = 0.002  # fraction of all pixels the winning colour must cover, else "no object found"
MIN_TRAVEL = 1.0  # pixels of centroid travel over the clip below which the object does not move


def background(video: np.ndarray) -> np.ndarray:
    """(T, 3) per-frame background: the median colour of each frame's border pixels."""
    border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)  # (T, 2H+2W, 3)
    return np.median(border.astype(np.float32), axis=1)


def labels(video: np.ndarray) -> np.ndarray:
    """(T, H, W) int: index into the palette (demo_data.COLOURS order), len(palette) for background, -1 for none."""
    frames = video.astype(np.float32)
    palette = np.array(list(demo_data.COLOURS.values()), dtype=np.float32)  # (K, 3)
    centres = np.concatenate([np.broadcast_to(palette, (len(frames), *palette.shape)),
                              background(video)[:, None]], axis=1)  # (T, K+1, 3)
    dist2 = ((frames[:, :, :, None] - centres[:, None, None]) ** 2).sum(axis=-1)  # (T, H, W, K+1)
    label = dist2.argmin(axis=-1)
    label[dist2.min(axis=-1) > MAX_DISTANCE**2] = -1
    return label


def centroids_of(mask: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T, 2) centroid (x, y) per frame in pixel coordinates, NaN where the mask is empty."""
    ys, xs = np.mgrid[0:mask.shape[1], 0:mask.shape[2]].astype(np.float32) + 0.5
    count = mask.sum(axis=(1, 2)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(mask * xs).sum(axis=(1, 2)) / count, (mask * ys).sum(axis=(1, 2)) / count], axis=1)


def track(video: np.ndarray, rgb) -> np.ndarray:
    """(T, 2) centroid (x, y) per frame of the pixels nearest to `rgb` (a palette colour's or any RGB
    triple), NaN in frames where there are none."""
    video = np.asarray(video)
    frames = video.astype(np.float32)
    rgb = np.asarray(rgb, dtype=np.float32)
    to_colour = np.linalg.norm(frames - rgb, axis=-1)  # (T, H, W)
    to_background = np.linalg.norm(frames - background(video)[:, None, None], axis=-1)
    mask = (to_colour <= MAX_DISTANCE) & (to_colour < to_background)
    known = [np.array(c, dtype=np.float32) for c in demo_data.COLOURS.values()]
    for other in known:  # a pixel nearer to another palette colour belongs to that colour's object
        if not np.allclose(other, rgb):
            mask &= to_colour <= np.linalg.norm(frames - other, axis=-1)
    return centroids_of(mask)


def direction_of(centroids: np.ndarray) -> str | None:
    """The demo direction of a (T, 2) centroid track (NaN frames skipped), None if it does not move."""
    t = np.arange(len(centroids), dtype=np.float32)
    valid = ~np.isnan(centroids).any(axis=1)
    if valid.sum() < 2:
        return None
    slope = np.polyfit(t[valid], centroids[valid], 1)[0]  # (2,) pixels per frame in x, y
    travel = slope * (t[valid][-1] - t[valid][0])
    if np.abs(travel).max() < MIN_TRAVEL:
        return None
    axis = int(np.abs(travel).argmax())
    return ("right" if travel[0] > 0 else "left") if axis == 0 else ("down" if travel[1] > 0 else "up")


def classify(video) -> tuple[str | None, str | None]:
    """(colour, direction) of a (T, H, W, 3) uint8 video; None where no object / no motion is found."""
    video = np.asarray(video)
    label = labels(video)
    names = list(demo_data.COLOURS)
    counts = np.bincount(label[label >= 0].ravel(), minlength=len(names) + 1)[: len(names)]
    if counts.max() < MIN_PIXELS * label.size:
        return None, None
    k = int(counts.argmax())
    return names[k], direction_of(centroids_of(label == k))  # the same pixels track() finds, labelled once


def score(rows: list[dict]) -> dict:
    """Accuracy of colour, direction and both over rows with `expected` and `predicted` (colour, direction)."""
    n = len(rows)
    colour = sum(r["expected"]["colour"] == r["predicted"]["colour"] for r in rows)
    direction = sum(r["expected"]["direction"] == r["predicted"]["direction"] for r in rows)
    both = sum(r["expected"]["colour"] == r["predicted"]["colour"]
               and r["expected"]["direction"] == r["predicted"]["direction"] for r in rows)
    return {"n": n, "colour": colour / max(n, 1), "direction": direction / max(n, 1), "both": both / max(n, 1)}


def row(name: str, prompt: str, video) -> dict:
    colour, _, direction = demo_data.parse_caption(prompt)
    got_colour, got_direction = classify(video)
    return {"name": name, "prompt": prompt, "expected": {"colour": colour, "direction": direction},
            "predicted": {"colour": got_colour, "direction": got_direction}}


def prompt_set() -> list[str]:
    """Every colour x direction once, the shapes taking turns: a fixed set of 24 prompts."""
    out = []
    for i, (colour, direction) in enumerate((c, d) for c in demo_data.COLOURS for d in demo_data.DIRECTIONS):
        out.append(demo_data.caption(colour, demo_data.SHAPES[i % len(demo_data.SHAPES)], direction))
    return out


def rows_from_folder(folder: str) -> list[dict]:
    from videosys.utils.video import read_video

    paths = sorted(glob.glob(os.path.join(folder, "*.mp4")))
    if not paths:
        raise FileNotFoundError(f"no .mp4 files in {folder!r}")
    out = []
    for path in paths:
        frames, _ = read_video(path)
        out.append(row(os.path.basename(path), os.path.splitext(os.path.basename(path))[0], frames))
    return out
