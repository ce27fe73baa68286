"""TaylorSeer on the demo model: PSNR of each video against the uncached one, per interval (first order,
warm-up 3), next to diffusers' TaylorSeer on Latte's attn1 / attn2 / ff modules (docs/benchmarks.md: 46.7 dB at interval
2, 39.0 at 3, 28.0 at 5, 24 demo prompts). A fidelity check, not a bench (`videosys bench` times methods).

    python scripts/taylorseer_demo_psnr.py --prompts 8 [--schedule diffusers]
"""

import argparse
import sys

from videosys import VideoSysEngine
from videosys.cache.taylorseer import TaylorSeerConfig
from videosys.eval.demo import prompt_set
from videosys.eval.metrics import psnr_frames
from videosys.models import config_class
from videosys.utils.files import write_json

DIFFUSERS_DB = {2: 46.7, 3: 39.0, 5: 28.0}  # diffusers' TaylorSeer on this model, measured with videosys bench --peers (docs/benchmarks.md)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--schedule", choices=("paper", "diffusers"), default="paper",
                        help="full steps as the authors' code (default) or as diffusers' hook")
    parser.add_argument("--output", default="outputs/taylorseer_demo_psnr.json")
    args = parser.parse_args(argv)
    prompts = prompt_set()[: args.prompts]
    rows = []
    with VideoSysEngine(config_class("latte")(preset="demo", progress_bar=False)) as engine:
        engine.set_cache(None)
        plain = [engine.generate(p, seed=0).video[0] for p in prompts]
        for interval in args.intervals:
            engine.set_cache(TaylorSeerConfig(interval=interval, max_order=1, warmup=3, schedule=args.schedule))
            scores = []
            for p, ref in zip(prompts, plain):
                video = engine.generate(p, seed=0).video[0]  # (T, H, W, 3) uint8
                to01 = lambda v: v.permute(0, 3, 1, 2).double() / 255
                scores.append(float(psnr_frames(to01(video), to01(ref)).mean()))
            rows.append({"interval": interval, "psnr": sum(scores) / len(scores),
                         "diffusers_psnr": DIFFUSERS_DB.get(interval)})
    print(f"{'interval':>8} {'ours dB':>8} {'diffusers dB':>13}")
    for r in rows:
        theirs = f"{r['diffusers_psnr']:.1f}" if r["diffusers_psnr"] is not None else "-"
        print(f"{r['interval']:>8} {r['psnr']:>8.2f} {theirs:>13}")
    write_json(args.output, {"prompts": prompts, "schedule": args.schedule, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
