"""Open-Sora-Plan v1.1 over the VBench prompts: `cd eval/teacache && python experiments/open_sora_plan.py --num-prompts 4`.
Exits with a message while the open-sora-plan family is not in this videosys install."""

import sys

from utils import Family, main

OPEN_SORA_PLAN = Family("open-sora-plan")  # baseline, teacache-slow, teacache-fast, pab (utils.CACHE_VARIANTS)

if __name__ == "__main__":
    sys.exit(main(OPEN_SORA_PLAN))
