"""Speed-up against fidelity (PSNR, LPIPS) for the variants of one family, as a PNG and a table.

    python plot_frontier.py --family-dir samples/latte [--output frontier.png] [--vbench-scores s.json]

The reading, the plot and the table are videosys/eval/frontier.py's.
"""

from __future__ import annotations

import argparse
import os
import sys

from videosys.eval.frontier import format_table, frontier, load_json, plot


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Speed-up vs PSNR / LPIPS for one family's variants.")
    p.add_argument("--family-dir", required=True, help="folder holding one subfolder per variant")
    p.add_argument("--baseline", default="baseline")
    p.add_argument("--time-key", default="total_s", help="stats.json timing: total_s, denoise_s or wall_s")
    p.add_argument("--output", help="PNG (default: <family-dir>/frontier.png); a .json beside it holds the points")
    p.add_argument("--vbench-scores", help="cal_vbench.py --output JSON, keyed by variant folder name")
    args = p.parse_args(argv)
    try:
        vbench = load_json(args.vbench_scores) if args.vbench_scores else None
        if args.vbench_scores and vbench is None:
            raise FileNotFoundError(f"no such file: {args.vbench_scores}")
        points = frontier(args.family_dir, args.baseline, args.time_key, vbench)
    except (FileNotFoundError, ValueError) as err:  # a missing file, or one that does not parse (named)
        print(f"plot_frontier.py: error: {err}", file=sys.stderr)
        return 2
    if not points:
        print("plot_frontier.py: error: no variant has both stats.json and metrics.json", file=sys.stderr)
        return 2
    output = args.output or os.path.join(args.family_dir, "frontier.png")
    name = os.path.basename(os.path.normpath(args.family_dir))
    baseline_vbench = (vbench or {}).get(args.baseline, {}).get("total_score")
    plot(points, output, f"{name}: speed / fidelity ({args.time_key})", baseline_vbench)
    from videosys.utils.files import write_json

    write_json(os.path.splitext(output)[0] + ".json", points, indent=1)
    print(format_table(points))
    print(f"-> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
