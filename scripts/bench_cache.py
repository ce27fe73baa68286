"""What each cache buys and costs on one family: no cache vs TeaCache slow / fast vs PAB.

    python scripts/bench_cache.py --model latte --preset tiny
    python scripts/bench_cache.py --model latte --model-path maxin-cn/Latte-1 --device cuda --prompts 3

One engine is built; the caches are switched on it between runs (no weight reloads). For
each variant: transformer time (summed over the denoising steps), end-to-end time, speed-up
over no cache, computed / reused steps, and PSNR / SSIM (LPIPS when its weights are
available) of the video against the uncached one, per the protocol in eval/common_metrics.
Prints a table and writes JSON. Each timing is the median of --repeats runs after a warm-up.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "eval", "common_metrics"))
from eval import average_per_frame, video_metrics  # noqa: E402  (eval/common_metrics/eval.py)

from videosys import VideoSysEngine  # noqa: E402
from videosys.models import config_class  # noqa: E402

VARIANTS = ("none", "teacache-slow", "teacache-fast", "pab")
PROMPTS = ("a red circle moving to the right", "a blue square moving up on a plain white background",
           "a dog running on the beach at sunset")


def timed_transformer(pipeline):
    """Wrap the transformer's forward to sum its wall time (synchronising on CUDA at each call's end)."""
    transformer = pipeline.transformer
    forward = transformer.forward
    spent = [0.0]

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        spent[0] += time.perf_counter() - start
        return out

    transformer.forward = wrapper
    return spent


def lpips_model_or_none(device):
    try:
        from lpips_alex import load_lpips

        return load_lpips(device=device)
    except (FileNotFoundError, RuntimeError, OSError) as err:
        print(f"(LPIPS skipped: {str(err).splitlines()[0]})")
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="latte")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model-path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--prompts", type=int, default=2, help="how many of the built-in prompts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, help="override the published number of steps")
    parser.add_argument("--output", default="outputs/bench_cache.json")
    args = parser.parse_args()

    overrides = {"device": args.device, "progress_bar": False}
    if args.model_path:
        overrides["model_path"] = args.model_path
    else:
        overrides["preset"] = args.preset
    if args.steps:
        overrides["num_inference_steps"] = args.steps
    config = config_class(args.model)(**overrides)
    engine = VideoSysEngine(config)
    spent = timed_transformer(engine.pipeline)
    lpips = lpips_model_or_none(config.torch_device())
    prompts = PROMPTS[: args.prompts]

    results, baseline_videos = {}, {}
    for variant in args.variants:
        engine.set_cache(variant)
        engine.generate(prompts[0], seed=0)  # warm-up (allocations, kernels)
        runs = []
        for prompt in prompts:
            for _ in range(args.repeats):
                spent[0] = 0.0
                out = engine.generate(prompt, seed=0)
                runs.append({"prompt": prompt, "total_s": out.stats["total_s"], "transformer_s": spent[0],
                             "video": out.video[0].numpy(), "stats": out.stats})
        row = {"total_s": statistics.median(r["total_s"] for r in runs),
               "transformer_s": statistics.median(r["transformer_s"] for r in runs)}
        stats = runs[-1]["stats"]
        row["teacache"] = stats.get("teacache", {})
        row["pab"] = stats.get("pab", {})
        if variant == "none":
            baseline_videos = {r["prompt"]: r["video"] for r in runs}
        curves = {"psnr": [], "ssim": [], "lpips": []}
        for r in runs[:: args.repeats]:  # one video per prompt (repeats are identical)
            names = ("psnr", "ssim", "lpips") if lpips is not None else ("psnr", "ssim")
            per_frame = video_metrics(baseline_videos[r["prompt"]], r["video"], names, lpips,
                                      device=config.torch_device())
            for name, values in per_frame.items():
                curves[name].append(values)
        for name, values in curves.items():
            row[name] = average_per_frame(values)[0] if values else None
        results[variant] = row

    base = results.get("none", next(iter(results.values())))
    for row in results.values():
        row["speedup"] = base["total_s"] / row["total_s"]
        row["transformer_speedup"] = base["transformer_s"] / row["transformer_s"]

    device = config.torch_device()
    print(f"{args.model} ({args.model_path or args.preset}) on {device}, {config.num_inference_steps} steps, "
          f"{config.num_frames}x{config.height}x{config.width}, median of {args.repeats}")
    header = f"{'variant':<15}{'total s':>9}{'transf. s':>10}{'speed-up':>9}{'computed':>9}{'PSNR':>8}{'SSIM':>8}"
    print(header + (f"{'LPIPS':>8}" if lpips is not None else ""))
    for variant, row in results.items():
        tea = row["teacache"]
        computed = f"{tea['computed_steps']}/{tea['computed_steps'] + tea['reused_steps']}" if tea else "all"
        line = (f"{variant:<15}{row['total_s']:>9.3f}{row['transformer_s']:>10.3f}{row['speedup']:>8.2f}x"
                f"{computed:>9}{row['psnr']:>8.2f}{row['ssim']:>8.4f}")
        print(line + (f"{row['lpips']:>8.4f}" if lpips is not None else ""))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    report = {"model": args.model, "preset": args.preset, "model_path": args.model_path, "device": str(device),
              "steps": config.num_inference_steps, "prompts": list(prompts), "repeats": args.repeats,
              "results": {k: {kk: (vv if not isinstance(vv, np.floating) else float(vv)) for kk, vv in v.items()}
                          for k, v in results.items()}}
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
