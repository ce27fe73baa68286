"""The demo model's groundwork: procedural clips, the colour-centroid evaluator, the training loop."""

import numpy as np
import pytest

from videosys.utils import demo_data
from videosys.utils.text import build_tiny_tokenizer


def test_caption_and_vocabulary():
    assert demo_data.caption("red", "circle", "right") == "a red circle moving to the right"
    assert demo_data.caption("blue", "square", "up") == "a blue square moving up"
    assert demo_data.parse_caption("a green triangle moving to the left") == ("green", "triangle", "left")
    with pytest.raises(ValueError, match="colour"):
        demo_data.caption("beige", "circle", "up")
    # every caption word is a whole token of the offline tokenizer (no character fallback)
    tokenizer = build_tiny_tokenizer(120)
    for combo in demo_data.combinations():
        text = demo_data.caption(*combo)
        assert len(tokenizer(text).input_ids) == len(text.split()) + 1  # + </s>


def test_clip_moves_one_colour_in_its_direction():
    clip = demo_data.make_clip("red", "square", "right", num_frames=8, height=64, width=64, seed=3)
    assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
    red = np.all(clip == demo_data.COLOURS["red"], axis=-1)  # (T, H, W)
    area = red.sum(axis=(1, 2))
    assert (area == area[0]).all() and 200 < area[0] < 300  # a 16 px square, never clipped by the border
    xs = np.array([np.nonzero(m)[1].mean() for m in red])
    ys = np.array([np.nonzero(m)[0].mean() for m in red])
    assert np.allclose(np.diff(xs), 32 / 7, atol=0.6)  # half the width over the clip, at constant speed
    assert np.ptp(ys) < 1e-6
    assert len(np.unique(clip[0].reshape(-1, 3), axis=0)) == 2  # the object and a plain background


@pytest.mark.parametrize("direction", list(demo_data.DIRECTIONS))
def test_clip_stays_inside_the_frame(direction):
    for seed in range(20):
        clip = demo_data.make_clip("blue", "circle", direction, num_frames=16, height=32, width=48, seed=seed)
        mask = np.all(clip == demo_data.COLOURS["blue"], axis=-1)  # (T, H, W)
        area = mask.sum(axis=(1, 2))
        assert area.min() > 0.9 * area.max() > 0  # the whole disc in every frame (up to pixel sampling)
        border = mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any()
        assert not border


def test_dataset_is_seeded_and_balanced():
    data = demo_data.DemoClips(num_frames=4, height=32, width=32, seed=7)
    n = len(data)
    assert n == 6 * 3 * 4
    clips, captions = data.batch(0, n)
    assert sorted(captions) == sorted(demo_data.caption(*c) for c in demo_data.combinations())  # one pass each
    again, _ = demo_data.DemoClips(num_frames=4, height=32, width=32, seed=7).batch(0, n)
    other, _ = demo_data.DemoClips(num_frames=4, height=32, width=32, seed=8).batch(0, n)
    assert np.array_equal(clips, again)
    assert not np.array_equal(clips, other)
    assert not np.array_equal(data.batch(1, n)[0], clips)  # the next pass: new positions and backgrounds
