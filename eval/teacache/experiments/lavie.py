"""LaVie (the base stage) over the VBench prompts: `python experiments/lavie.py --preset tiny --num-prompts 4
--variant baseline deepcache`. Exits with a message while the family is not in this videosys install.

Variants: the baseline and the registered methods that apply to LaVie's UNet (utils.CACHE_VARIANTS) but PAB and
FasterCache, whose windows / schedules nobody publishes for LaVie. teacache-slow / teacache-fast run on the tiny preset
(its polynomial, calibrated here); the release has none until calibrated (scripts/calibrate_teacache.py)."""

import sys

from utils import CACHE_VARIANTS, Family, main

LAVIE = Family("lavie", variants={k: v for k, v in CACHE_VARIANTS.items() if k not in ("pab", "fastercache")})

if __name__ == "__main__":
    sys.exit(main(LAVIE))
