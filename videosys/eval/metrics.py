"""PSNR, SSIM and LPIPS of generated videos against the baseline videos of the same name.

Command line: `python eval/teacache/common_metrics/eval.py --gt_video_dir samples/latte/baseline
--generated_video_dir samples/latte/teacache-slow [--output metrics.json]`.

As the TeaCache / PAB papers measure (the protocol: docs/evaluation.md): frames in [0, 1]; per frame
PSNR (MSE < 1e-10 gives 100), SSIM (11x11 Gaussian window, sigma 1.5, C1 = 0.01^2,
C2 = 0.03^2, per channel, averaged) and LPIPS (AlexNet, v0.1, inputs in [-1, 1]); each
metric averaged over the videos per frame index, then over the frames.
The JSON (default: <generated_video_dir>/metrics.json) holds the scores, the per-frame
curves and each video's mean; a table is printed.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from videosys.eval.lpips import load_lpips

METRICS = ("psnr", "ssim", "lpips")
PSNR_IDENTICAL = 100.0  # reported when MSE < 1e-10 (common_metrics_on_video_quality)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # (K * data_range)^2 with data range 1
FRAME_CHUNK = 8  # frames per batch: bounds memory for long, large videos


# ---------------------------------------------------------------- per-frame metrics


def psnr_frames(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) in [0, 1] -> (T,) PSNR in dB."""
    mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    psnr = -10.0 * torch.log10(mse.clamp_min(1e-30))
    return torch.where(mse < 1e-10, torch.full_like(psnr, PSNR_IDENTICAL), psnr)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter over H and W, no padding ('valid'), each channel on its own."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_frames(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) in [0, 1] -> (T,) SSIM: the mean SSIM map of each channel, averaged over channels.
    The map covers the positions where the whole window fits (as scikit-image crops its border)."""
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    x, y = x.double(), y.double()
    g = gaussian_window().to(x.device)
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    var_x = _blur(x * x, g) - mu_x ** 2
    var_y = _blur(y * y, g) - mu_y ** 2
    cov = _blur(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2))
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)  # per channel, then over channels


@torch.no_grad()
def lpips_frames(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) in [0, 1] -> (T,) LPIPS, inputs scaled to [-1, 1]."""
    return model(x.float() * 2 - 1, y.float() * 2 - 1).double()


def video_metrics(gt: np.ndarray, gen: np.ndarray, metrics=METRICS, lpips_model=None,
                  device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Per-frame metrics of two (T, H, W, 3) uint8 videos of one shape -> {metric: (T,) array}."""
    if gt.shape != gen.shape:
        raise ValueError(f"shapes differ: baseline {gt.shape}, generated {gen.shape}")
    out = {name: [] for name in metrics}
    for start in range(0, gt.shape[0], FRAME_CHUNK):
        # (T, H, W, 3) uint8 -> (T, 3, H, W) in [0, 1]
        x = torch.from_numpy(gt[start:start + FRAME_CHUNK]).to(device).permute(0, 3, 1, 2).double() / 255.0
        y = torch.from_numpy(gen[start:start + FRAME_CHUNK]).to(device).permute(0, 3, 1, 2).double() / 255.0
        if "psnr" in out:
            out["psnr"].append(psnr_frames(x, y))
        if "ssim" in out:
            out["ssim"].append(ssim_frames(x, y))
        if "lpips" in out:
            out["lpips"].append(lpips_frames(lpips_model, x, y))
    return {name: torch.cat(values).cpu().numpy() for name, values in out.items()}


def average_per_frame(curves: list[np.ndarray]) -> tuple[float, list[float]]:
    """Mean over the videos at each frame index (over those that have it), then over the frame indices."""
    length = max(len(c) for c in curves)
    per_frame = []
    for t in range(length):
        values = [c[t] for c in curves if len(c) > t]
        per_frame.append(float(np.mean(values)))
    return float(np.mean(per_frame)), per_frame


# ---------------------------------------------------------------- folders


def list_videos(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(n for n in os.listdir(folder) if n.endswith(".mp4") and not n.startswith("."))


def pair_videos(gt_dir: str, gen_dir: str, allow_missing: bool = False) -> list[str]:
    """The generated videos' names, each of which must have a baseline of the same name."""
    gen, gt = list_videos(gen_dir), set(list_videos(gt_dir))
    missing = [n for n in gen if n not in gt]
    if missing and not allow_missing:
        raise FileNotFoundError(f"{len(missing)} generated videos have no baseline of the same name in {gt_dir}, "
                                f"e.g. {missing[:3]} (--allow-missing skips them)")
    names = [n for n in gen if n in gt]
    if not names:
        raise FileNotFoundError(f"no video names shared by {gt_dir} and {gen_dir}")
    return names


def evaluate(gt_dir: str, gen_dir: str, metrics=METRICS, device: str = "cpu", lpips_weights: str | None = None,
             allow_missing: bool = False, progress: bool = True) -> dict:
    from videosys.utils.video import read_video

    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}")
    names = pair_videos(gt_dir, gen_dir, allow_missing)
    lpips_model = load_lpips(lpips_weights, device) if "lpips" in metrics else None
    curves = {name: [] for name in metrics}
    per_video = {}
    iterator = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="metrics", unit="video")
    for name in iterator:
        gt, _ = read_video(os.path.join(gt_dir, name))
        gen, _ = read_video(os.path.join(gen_dir, name))
        try:
            result = video_metrics(gt, gen, metrics, lpips_model, device)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        per_video[name] = {m: float(np.mean(v)) for m, v in result.items()}
        for m, v in result.items():
            curves[m].append(v)
    report = {"gt_video_dir": os.path.abspath(gt_dir), "generated_video_dir": os.path.abspath(gen_dir),
              "videos": len(names), "metrics": {}, "per_video": per_video}
    for m in metrics:
        value, per_frame = average_per_frame(curves[m])
        report["metrics"][m] = {"value": value, "per_frame": per_frame}
    return report


def format_table(report: dict) -> str:
    rows = [("metric", "value", "frames", "videos")]
    for m, r in report["metrics"].items():
        value = f"{r['value']:.4f}" if math.isfinite(r["value"]) else str(r["value"])
        rows.append((m.upper(), value, str(len(r["per_frame"])), str(report["videos"])))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
