"""PSNR / SSIM / LPIPS of CascadeV reconstructions against their inputs, over a folder of clips.

    python scripts/eval_cascadev.py --demo-clips 8 --preset tiny            # offline: demo clips, tiny random model
    python scripts/eval_cascadev.py --clips inter4k_1024/ --model-path ByteDance/CascadeV   # the protocol of docs/families/cascadev.md
    python scripts/eval_cascadev.py --clips clips/ --num-frames 8 --save-dir recs/ --output cascadev.json
    python scripts/eval_cascadev.py --demo-clips 4 --preset tiny --caches pab,taylorseer,fbcache-0.4 --threads 1

Each clip is reconstructed at the model's size (short edge resized, centre-cropped square, as the
release's recon.sh) and scored against that prepared input frame by frame, in memory (no video codec
in between), with eval/teacache/common_metrics/eval.py's metrics: each metric averaged over the clips per
frame index, then over the frames. `--demo-clips N` writes N procedural clips
(videosys/utils/demo_data.py) into `--clips` (default: a temporary folder) first. LPIPS is skipped
when its weights are not available (python eval/teacache/common_metrics/lpips_alex.py fetch).
Prints a table and writes JSON (written whole or not at all).

`--caches a,b,...` (registered names; "teacache-cal-<threshold>" with `--coefficients`, a
scripts/calibrate_teacache.py JSON) also reconstructs every clip with each cache on the DiT: the
denoising time per step and its speed-up over the uncached run, PSNR against the input and against the
uncached reconstruction, the refined latents' relative L2 error against the uncached ones, the fraction of
the DiT's attention and MLP forwards that ran (what the cache skipped, independent of the machine's load),
and what it reused (its out.stats). Timings are wall clock on this
machine: noisy when other jobs share it.
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


def compare_caches(engine, paths: list[str], num_frames: int | None, variants: list[str], coefficients,
                   device: str, repeats: int = 1) -> list[dict]:
    """Every clip uncached, then with each cache: per variant the denoising seconds per step (the fastest of
    `repeats` runs per clip), the speed-up, PSNR against the input and the uncached reconstruction, the latents'
    relative error, and the cache's stats (summed over the clips, of one run each)."""
    from videosys.eval.bench import cache_spec
    from videosys.models.cascadev.transformer import Mlp, SelfAttention

    # attention and MLP forwards run (one process): what a cache skipped, whatever the machine's load
    modules_run = [0]
    transformer = engine.pipeline.transformer
    handles = [m.register_forward_hook(lambda *a: modules_run.__setitem__(0, modules_run[0] + 1))
               for m in transformer.modules() if isinstance(m, (SelfAttention, Mlp))]
    rows, reference, reference_latents = [], {}, {}
    for variant in ["none", *variants]:
        engine.set_cache(cache_spec(variant, coefficients))
        seconds = steps = 0.0
        modules_run[0] = 0
        to_input, to_uncached, latent_errors, stats = [], [], [], {}
        for path in paths:
            runs = [engine.reconstruct(path, num_frames=num_frames) for _ in range(repeats)]  # seeded: alike
            out = runs[0]
            seconds += min(r.stats["denoise_s"] for r in runs)
            steps += out.stats["steps"]
            video = out.video[0].numpy()
            to_input.append(video_metrics(out.input_video[0].numpy(), video, ("psnr",), device=device)["psnr"])
            if variant == "none":
                reference[path], reference_latents[path] = video, out.latents
            else:
                to_uncached.append(video_metrics(reference[path], video, ("psnr",), device=device)["psnr"])
                ref = reference_latents[path]  # the refined latents, before the VAE (it saturates random weights)
                latent_errors.append(float((out.latents - ref).norm() / ref.norm()))
            for name, values in out.stats.items():
                if isinstance(values, dict):
                    for k, v in values.items():
                        if isinstance(v, (int, float)):
                            stats.setdefault(name, {})[k] = stats.get(name, {}).get(k, 0) + v
        rows.append({"cache": variant, "s_per_step": seconds / steps, "psnr_input": average_per_frame(to_input)[0],
                     "psnr_uncached": average_per_frame(to_uncached)[0] if to_uncached else None,
                     "latent_rel_error": sum(latent_errors) / len(latent_errors) if latent_errors else None,
                     "modules_run": modules_run[0] / repeats, "stats": stats})
    engine.set_cache(None)
    for h in handles:
        h.remove()
    for row in rows:
        row["speedup"] = rows[0]["s_per_step"] / row["s_per_step"]
        row["modules_fraction"] = row["modules_run"] / rows[0]["modules_run"]
    return rows


def cache_table(rows: list[dict]) -> str:
    lines = [f"{'cache':<22} {'s/step':>8} {'speed-up':>8} {'modules':>8} {'PSNR in':>8} {'PSNR unc':>8} "
             f"{'lat err':>8}  reused"]
    for r in rows:
        unc = "-" if r["psnr_uncached"] is None else f"{r['psnr_uncached']:.2f}"
        err = "-" if r["latent_rel_error"] is None else f"{r['latent_rel_error']:.4f}"
        reused = "; ".join(f"{k}={v}" for s in r["stats"].values() for k, v in s.items()
                           if "reused" in k or "forecast" in k)
        lines.append(f"{r['cache']:<22} {r['s_per_step']:>8.4f} {r['speedup']:>7.2f}x {r['modules_fraction']:>8.3f} "
                     f"{r['psnr_input']:>8.2f} "
                     f"{unc:>8} {err:>8}  {reused}")
    return "\n".join(lines)


def release_layout_dit(width: int, tile: int, config):
    """The release's DiT layout (CascadeVTransformerConfig defaults: 28 blocks, grid strides, patch 2) at `width`
    with 64-dim heads and a `tile` latent tile, random weights (seed 0): a timing stand-in at a real depth."""
    import torch

    from videosys.models.cascadev.transformer import CascadeVTransformer, CascadeVTransformerConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CascadeVTransformer(CascadeVTransformerConfig(input_size=tile, hidden_size=width,
                                                              num_heads=width // 64))
    return model.to(device=config.torch_device(), dtype=config.torch_dtype()).eval()


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
    p.add_argument("--model-path", help="ByteDance/CascadeV or a folder (see docs/families/cascadev.md)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the release's 8)")
    p.add_argument("--num-frames", type=int, help="first N frames of each clip (default: all)")
    p.add_argument("--size", type=int, help="short edge (default: the DiT tile, 1024 px / tiny 64; 0 keeps)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--save-dir", help="also write the reconstructions here")
    p.add_argument("--caches", help="comma-separated caches to compare with the uncached run (see above)")
    p.add_argument("--repeats", type=int, default=1, help="--caches: time the fastest of N runs per clip")
    p.add_argument("--coefficients", help="scripts/calibrate_teacache.py JSON for teacache-cal-<threshold>")
    p.add_argument("--threads", type=int, help="torch threads on CPU")
    p.add_argument("--dit-width", type=int, help="timing only, with --preset tiny: replace its DiT by the release's "
                   "layout (28 blocks, its grid strides, 64-dim heads) at this width, random weights")
    p.add_argument("--dit-tile", type=int, default=16, help="with --dit-width: the DiT's latent tile (x8 px)")
    p.add_argument("--output", default="cascadev_eval.json")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

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
    if args.dit_width and (args.preset != "tiny" or args.num_gpus != 1):
        print("eval_cascadev.py: error: --dit-width replaces the tiny preset's DiT in one process", file=sys.stderr)
        return 2
    with VideoSysEngine(config) as engine:
        pipe = engine.pipeline
        if args.dit_width:
            pipe.transformer = release_layout_dit(args.dit_width, args.dit_tile, config)
        size = config.size if config.size is not None else pipe.transformer.config.input_size * pipe.vae_factor
        variants = [v for v in (args.caches or "").split(",") if v]
        coefficients = None
        if args.coefficients:
            import json

            with open(args.coefficients) as f:
                coefficients = json.load(f)["coefficients"]
        try:
            report = evaluate(engine, paths, args.num_frames, lpips_or_none(device), device, args.save_dir)
            if variants:
                report["caches"] = compare_caches(engine, paths, args.num_frames, variants, coefficients, device,
                                                  args.repeats)
        except (ValueError, FileNotFoundError) as err:
            print(f"eval_cascadev.py: error: {err}", file=sys.stderr)
            return 2
    report.update(model=args.model_path or f"preset {args.preset}", steps=config.num_inference_steps,
                  size=size, seed=args.seed, clip_folder=os.path.abspath(folder))
    print(table(report))
    if "caches" in report:
        print(cache_table(report["caches"]))
    write_json(args.output, report)
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
