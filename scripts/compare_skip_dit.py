"""What Skip-DiT's skip branches cost uncached: a model with them against the model it was fine-tuned from.

    python scripts/compare_skip_dit.py --base videosys/assets/demo-latte --skip videosys/assets/demo-latte-skip

Both models generate the demo's 24 prompts (seed 0, no cache); prints the tracker's prompt accuracy of each
and the PSNR / SSIM of the skip model's videos against the base model's (same prompt and seed), writes JSON.
What Skip-Cache buys on the skip model against the other caches: scripts/bench_cache.py --model-path <skip>.
"""

import argparse
import sys

import torch

from videosys import LatteConfig, VideoSysEngine
from videosys.eval import demo as eval_demo
from videosys.eval.metrics import average_per_frame, video_metrics
from videosys.utils.files import write_json


def generate(path: str, prompts: list[str], seed: int, steps: int | None = None) -> list:
    config = LatteConfig(model_path=path, preset="tiny", progress_bar=False, num_inference_steps=steps)
    with VideoSysEngine(config) as engine:
        return [engine.generate(p, seed=seed).video[0].cpu().numpy() for p in prompts]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the model the skip model was fine-tuned from")
    parser.add_argument("--skip", required=True, help="the model with skip branches")
    parser.add_argument("--prompts", type=int, help="only the first N of the 24 prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the preset's 50)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/compare_skip_dit.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prompts = eval_demo.prompt_set()[: args.prompts]
    videos = {name: generate(path, prompts, args.seed, args.steps) for name, path in (("base", args.base), ("skip", args.skip))}
    report = {"base": args.base, "skip": args.skip, "prompts": prompts, "seed": args.seed}
    for name, vids in videos.items():
        report[f"{name}_accuracy"] = eval_demo.score([eval_demo.row(p, p, v) for p, v in zip(prompts, vids)])
    curves = {"psnr": [], "ssim": []}
    for ref, video in zip(videos["base"], videos["skip"]):
        for metric, values in video_metrics(ref, video, ("psnr", "ssim")).items():
            curves[metric].append(values)
    report.update({metric: average_per_frame(values)[0] for metric, values in curves.items()})
    n = len(prompts)
    print(f"{'model':<6}{'colour':>8}{'direction':>11}{'both':>6}")
    for name in ("base", "skip"):
        acc = report[f"{name}_accuracy"]
        print(f"{name:<6}{acc['colour'] * n:>8.0f}{acc['direction'] * n:>11.0f}{acc['both'] * n:>6.0f}   (of {n})")
    print(f"skip vs base, uncached: PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f}")
    write_json(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
