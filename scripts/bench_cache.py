"""`videosys bench` (videosys/eval/bench.py), kept under its old name: the same options.

    python scripts/bench_cache.py --threads 1 --peers        # = videosys bench --threads 1 --peers
"""

import sys

from videosys.eval.bench import cache_spec, main  # noqa: F401  (cache_spec: the old script's helper)

if __name__ == "__main__":
    sys.exit(main())
