"""Open-Sora 1.2 over the VBench prompts: `python experiments/opensora.py --num-prompts 4`.
Exits with a message while the open-sora family is not in this videosys install."""

import sys

from utils import Family, main

OPEN_SORA = Family("open-sora")  # baseline, teacache-slow, teacache-fast, pab (utils.CACHE_VARIANTS)

if __name__ == "__main__":
    sys.exit(main(OPEN_SORA))
