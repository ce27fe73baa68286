"""PSNR / SSIM / LPIPS of CascadeV reconstructions against their inputs, over a folder of clips.

    python scripts/eval_cascadev.py --demo-clips 8 --preset tiny            # offline: demo clips, tiny random model
    python scripts/eval_cascadev.py --clips inter4k_1024/ --model-path ByteDance/CascadeV   # the README's protocol
    python scripts/eval_cascadev.py --clips clips/ --num-frames 8 --save-dir recs/ --output cascadev.json

Each clip is reconstructed at the model's size (short edge resized, centre-cropped square, as the
release's recon.sh) and scored against that prepared input frame by frame, in memory (no video codec
in between), with eval/common_metrics/eval.py's metrics: each metric averaged over the clips per
frame index, then over the frames. `--demo-clips N` writes N procedural clips
(videosys/utils/demo_data.py) into `--clips` (default: a temporary folder) first. LPIPS is skipped
when its weights are not available (python eval/common_metrics/lpips_alex.py fetch).
Prints a table and writes JSON (written whole or not at all).
"""

import argparse
import os
import sys
import tempfile
import time

from videosys import VideoSysEngine
from videosys.eval.metrics import average_per_frame, video_metrics
from videosys.utils.files import write_json
from videosys.utils.video import save_video


def write_demo_clips(folder: str, count: int, num_frames: int, size: int, seed: int = 0) -> list[str]:
    """`count` demo clips (one moving shape each) as mp4 files named by their caption."""
    from videosys.utils.demo_data import DemoClips

    clips = DemoClips(num_frames=num_frames, height=size, width=size, seed=seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        clip, text, _ = clips.item(i)
        paths.append(save_video(clip, os.path.join(folder, f"{i:03d} {text}.mp4"), fps=8))
    return paths


def lpips_or_none(device: str):
    try:
        from videosys.eval.lpips import load_lpips

        return load_lpips(device=device)
    except (FileNotFoundError, OSError) as err:
        print(f"LPIPS skipped: {err}", file=sys.stderr)
        return None


def evaluate(engine, paths: list[str], num_frames: int | None, lpips, device: str, save_dir: str | None) -> dict:
    metrics = ("psnr", "ssim", "lpips") if lpips is not None else ("psnr", "ssim")
    curves = {m: [] for m in metrics}
    per_clip, seconds = {}, 0.0
    for path in paths:
        start = time.perf_counter()
        out = engine.reconstruct(path, num_frames=num_frames)
        seconds += time.perf_counter() - start
        scores = video_metrics(out.input_video[0].numpy(), out.video[0].numpy(), metrics, lpips, device=device)
        for m, values in scores.items():
            curves[m].append(values)
        name = os.path.basename(path)
        per_clip[name] = {m: float(v.mean()) for m, v in scores.items()}
        if save_dir:
            save_video(out.video[0], os.path.join(save_dir, name), fps=round(out.fps))
    return {"clips": len(paths), "reconstruct_s": seconds,
            "metrics": {m: average_per_frame(curves[m])[0] for m in metrics}, "per_clip": per_clip}


def table(report: dict) -> str:
    rows = [("metric", "value")] + [(m.upper(), f"{v:.4f}") for m, v in report["metrics"].items()]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows) + f"\n({report['clips']} clips, " \
        f"{report['reconstruct_s']:.1f}s reconstructing)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", help="folder of .mp4 clips (with --demo-clips: where they are written)")
    p.add_argument("--demo-clips", type=int, default=0, help="write this many procedural demo clips first")
    p.add_argument("--demo-frames", type=int, default=16)
    p.add_argument("--demo-size", type=int, default=64)
    p.add_argument("--preset", help="tiny: random weights (its numbers say nothing about quality)")
    p.add_argument("--model-path", help="ByteDance/CascadeV or a folder (see the README)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the release's 8)")
    p.add_argument("--num-frames", type=int, help="first N frames of each clip (default: all)")
    p.add_argument("--size", type=int, help="short edge (default: the DiT tile, 1024 px / tiny 64; 0 keeps)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--save-dir", help="also write the reconstructions here")
    p.add_argument("--output", default="cascadev_eval.json")
    args = p.parse_args(argv)

    from videosys import CascadeVConfig

    folder = args.clips
    if args.demo_clips:
        folder = folder or tempfile.mkdtemp(prefix="cascadev-clips-")
        write_demo_clips(folder, args.demo_clips, args.demo_frames, args.demo_size)
    if not folder or not os.path.isdir(folder):
        print(f"eval_cascadev.py: error: no clip folder {folder!r} (pass --clips or --demo-clips)", file=sys.stderr)
        return 2
    paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(".mp4")]
    if not paths:
        print(f"eval_cascadev.py: error: no .mp4 clips in {folder!r}", file=sys.stderr)
        return 2
    values = dict(preset=args.preset, model_path=args.model_path, num_inference_steps=args.steps, seed=args.seed,
                  num_gpus=args.num_gpus, device=args.device, dtype=args.dtype, progress_bar=False)
    if args.size is not None:
        values["size"] = args.size
    try:
        config = CascadeVConfig(**values)
    except ValueError as err:
        print(f"eval_cascadev.py: error: {err}", file=sys.stderr)
        return 2
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
    device = str(config.torch_device())
    with VideoSysEngine(config) as engine:
        pipe = engine.pipeline
        size = config.size if config.size is not None else pipe.transformer.config.input_size * pipe.vae_factor
        try:
            report = evaluate(engine, paths, args.num_frames, lpips_or_none(device), device, args.save_dir)
        except (ValueError, FileNotFoundError) as err:
            print(f"eval_cascadev.py: error: {err}", file=sys.stderr)
            return 2
    report.update(model=args.model_path or f"preset {args.preset}", steps=config.num_inference_steps,
                  size=size, seed=args.seed, clip_folder=os.path.abspath(folder))
    print(table(report))
    write_json(args.output, report)
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
