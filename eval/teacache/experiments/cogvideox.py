"""CogVideoX over the VBench prompts: `cd eval/teacache && python experiments/cogvideox.py --num-prompts 4`.
Exits with a message while the cogvideox family is not in this videosys install."""

import sys

from utils import Family, main

# variant -> config overrides (reference/acceleration.md: TeaCache thresholds 0.1 / 0.2, PAB defaults)
COGVIDEOX = Family("cogvideox", {
    "baseline": {},
    "teacache-slow": {"teacache": {"threshold": 0.1}},
    "teacache-fast": {"teacache": {"threshold": 0.2}},
    "pab": {"pab": {}},
})

if __name__ == "__main__":
    sys.exit(main(COGVIDEOX))
