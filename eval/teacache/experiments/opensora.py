"""Open-Sora 1.2 over the VBench prompts: `cd eval/teacache && python experiments/opensora.py --num-prompts 4`.
Exits with a message while the open-sora family is not in this videosys install."""

import sys

from utils import Family, main

# variant -> config overrides (reference/acceleration.md: TeaCache thresholds 0.1 / 0.2, PAB defaults)
OPEN_SORA = Family("open-sora", {
    "baseline": {},
    "teacache-slow": {"teacache": {"threshold": 0.1}},
    "teacache-fast": {"teacache": {"threshold": 0.2}},
    "pab": {"pab": {}},
})

if __name__ == "__main__":
    sys.exit(main(OPEN_SORA))
