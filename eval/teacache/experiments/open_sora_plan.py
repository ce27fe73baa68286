"""Open-Sora-Plan over the VBench prompts: `python experiments/open_sora_plan.py --num-prompts 4`.

Runs v1.2 (the implemented version). The TeaCache paper's Open-Sora-Plan numbers are for v1.1
(65x512x512, 150 PNDM steps), which is not implemented yet."""

import sys

from utils import Family, main

OPEN_SORA_PLAN = Family("open-sora-plan")  # baseline, teacache-slow, teacache-fast, pab (utils.CACHE_VARIANTS)

if __name__ == "__main__":
    sys.exit(main(OPEN_SORA_PLAN))
