"""Temporal consistency of a demo video: how straight the object moves, how steady its colour, how much it flickers.

- straightness: the object's centroid track (the demo tracker's pixels of the prompt's colour) against its
  least-squares line over time: RMS distance in pixels (0 = moves on a straight line at constant speed, as
  every training clip does);
- colour stability: the standard deviation over frames of the object pixels' mean colour (RGB levels, mean
  over channels);
- temporal flickering as VBench defines it (vbench/temporal_flickering.py): the mean absolute difference of
  consecutive frames in 0..255, as a score (255 - difference) / 255 (1 = no change at all).
"""

import numpy as np

from videosys.eval.demo import MAX_DISTANCE, background
from videosys.utils import demo_data


def object_mask(video: np.ndarray, colour: str) -> np.ndarray:
    """(T, H, W) bool: pixels nearer to the palette `colour` than to the background and within MAX_DISTANCE."""
    frames = np.asarray(video).astype(np.float32)
    rgb = np.asarray(demo_data.COLOURS[colour], dtype=np.float32)
    to_colour = np.linalg.norm(frames - rgb, axis=-1)
    to_background = np.linalg.norm(frames - background(np.asarray(video))[:, None, None], axis=-1)
    return (to_colour <= MAX_DISTANCE) & (to_colour < to_background)


def straightness(video: np.ndarray, colour: str) -> float:
    """RMS pixel distance of the object's centroid track from its least-squares line (NaN if under 3 frames seen)."""
    mask = object_mask(video, colour)
    ys, xs = np.mgrid[0:mask.shape[1], 0:mask.shape[2]].astype(np.float64) + 0.5
    count = mask.sum(axis=(1, 2))
    seen = count > 0
    if seen.sum() < 3:
        return float("nan")
    track = np.stack([(mask * xs).sum(axis=(1, 2))[seen], (mask * ys).sum(axis=(1, 2))[seen]], 1) / count[seen, None]
    t = np.arange(len(mask), dtype=np.float64)[seen]
    fit = np.stack([np.polyval(np.polyfit(t, track[:, k], 1), t) for k in range(2)], 1)  # (T_seen, 2)
    return float(np.sqrt(((track - fit) ** 2).sum(axis=1).mean()))


def colour_stability(video: np.ndarray, colour: str) -> float:
    """Std over frames of the object's mean RGB (mean over the 3 channels); NaN if under 2 frames show it."""
    frames = np.asarray(video).astype(np.float64)
    mask = object_mask(video, colour)
    seen = mask.sum(axis=(1, 2)) > 0
    if seen.sum() < 2:
        return float("nan")
    means = np.stack([frames[i][mask[i]].mean(axis=0) for i in np.flatnonzero(seen)])  # (T_seen, 3)
    return float(means.std(axis=0).mean())


def temporal_flickering(video: np.ndarray) -> float:
    """VBench's temporal_flickering score of a (T, H, W, 3) uint8 video."""
    frames = np.asarray(video).astype(np.float64)
    if len(frames) < 2:
        return 1.0
    difference = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3)).mean()
    return float((255.0 - difference) / 255.0)
