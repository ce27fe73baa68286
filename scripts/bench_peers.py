"""diffusers' caches on the demo model: `videosys bench --variants none --peers ...` (videosys/eval/peers.py).

    python scripts/bench_peers.py --threads 2
    python scripts/bench_peers.py --variants taylorseer-2 taylorseer-lite-3 --prompts 4

Our uncached run is kept as the second baseline (each peer's fidelity is against diffusers' own uncached video).
"""

import argparse
import sys

from videosys.eval import bench, peers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path")
    parser.add_argument("--variants", nargs="+", default=list(peers.VARIANTS), help="peer variants")
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output", default="outputs/bench_peers.json")
    args = parser.parse_args(argv)
    forwarded = ["--variants", "none", "--peers", *args.variants, "--repeats", str(args.repeats),
                 "--output", args.output]
    for flag, value in (("--model-path", args.model_path), ("--prompts", args.prompts), ("--steps", args.steps),
                        ("--threads", args.threads)):
        if value is not None:
            forwarded += [flag, str(value)]
    return bench.main(forwarded)


if __name__ == "__main__":
    sys.exit(main())
