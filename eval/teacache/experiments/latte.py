"""Latte over the VBench prompts: `cd eval/teacache && python experiments/latte.py --preset tiny --num-prompts 4`."""

import sys

from utils import Family, main

# variant -> config overrides (reference/acceleration.md: TeaCache thresholds 0.1 / 0.2, PAB's Latte defaults);
# a cache variant works once its config field exists in LatteConfig
LATTE = Family("latte", {
    "baseline": {},
    "teacache-slow": {"teacache": {"threshold": 0.1}},
    "teacache-fast": {"teacache": {"threshold": 0.2}},
    "pab": {"pab": {}},
})

if __name__ == "__main__":
    sys.exit(main(LATTE))
