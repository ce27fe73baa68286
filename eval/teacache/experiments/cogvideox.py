"""CogVideoX over the VBench prompts: `python experiments/cogvideox.py --num-prompts 4`.
Exits with a message while the cogvideox family is not in this videosys install."""

import sys

from utils import Family, main

COGVIDEOX = Family("cogvideox")  # baseline, teacache-slow, teacache-fast, pab (utils.CACHE_VARIANTS)

if __name__ == "__main__":
    sys.exit(main(COGVIDEOX))
