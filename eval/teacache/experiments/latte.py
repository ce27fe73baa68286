"""Latte over the VBench prompts: `python experiments/latte.py --preset tiny --num-prompts 4`."""

import sys

from utils import Family, main

LATTE = Family("latte")  # baseline, teacache-slow, teacache-fast, pab (utils.CACHE_VARIANTS)

if __name__ == "__main__":
    sys.exit(main(LATTE))
