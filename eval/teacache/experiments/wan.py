"""Wan over the VBench prompts: `python experiments/wan.py --num-prompts 4`.
Exits with a message while the wan family is not in this videosys install."""

import sys

from utils import Family, main

WAN = Family("wan")  # baseline and every registered method's published operating points (utils.CACHE_VARIANTS)

if __name__ == "__main__":
    sys.exit(main(WAN))
