"""PSNR, SSIM and LPIPS of generated videos against the baseline videos of the same name (from eval/teacache):

    python common_metrics/eval.py --gt_video_dir samples/latte/baseline \
        --generated_video_dir samples/latte/teacache-slow [--output metrics.json]

As the TeaCache / PAB papers measure: the per-frame protocol is videosys.eval.metrics' (its docstring says
how each metric is computed and averaged). The JSON (default: <generated_video_dir>/metrics.json) holds the
scores, the per-frame curves and each video's mean; a table is printed.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from videosys.eval.metrics import METRICS, evaluate, format_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="PSNR / SSIM / LPIPS of generated videos against the baseline.")
    p.add_argument("--gt_video_dir", "--gt-video-dir", required=True, help="baseline videos")
    p.add_argument("--generated_video_dir", "--generated-video-dir", required=True, help="videos to score")
    p.add_argument("--output", help="JSON file (default: <generated_video_dir>/metrics.json)")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lpips-weights", help="weights file (see lpips_alex.py); default: looked up")
    p.add_argument("--allow-missing", action="store_true", help="skip generated videos that have no baseline")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        report = evaluate(args.gt_video_dir, args.generated_video_dir, args.metrics, args.device,
                          args.lpips_weights, args.allow_missing, not args.no_progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    output = args.output or os.path.join(args.generated_video_dir, "metrics.json")
    from videosys.utils.files import write_json

    write_json(output, report, indent=1)
    print(format_table(report))
    print(f"-> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
