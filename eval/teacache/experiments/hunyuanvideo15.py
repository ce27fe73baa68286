"""HunyuanVideo-1.5 (480p T2V) over the VBench prompts: `python experiments/hunyuanvideo15.py
--num-prompts 4 --variant baseline magcache`. Exits with a message while the family is not in this videosys install.

Variants: the caches published for HunyuanVideo-1.5 (videosys/models/hunyuanvideo15/cache_settings.py): MagCache
(the authors' ratios and settings). No TeaCache polynomial or PAB windows are published for it, so the TeaCache
paper's teacache-slow / teacache-fast / pab variants are left out (calibrate: scripts/calibrate_teacache.py)."""

import sys

from utils import Family, main

HUNYUANVIDEO15 = Family("hunyuanvideo-1.5", variants={"baseline": {}, "magcache": {"cache": "magcache"}})

if __name__ == "__main__":
    sys.exit(main(HUNYUANVIDEO15))
