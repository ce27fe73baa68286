"""The planner's predictions for every family's release at its published size: the plan it picks for an 8, 16,
24 and 80 GB card (and the predicted peak), written into docs/memory.md's table (between its markers) and to
benchmarks/memory_plan.json, with the planner's wall time per release. No weights, CPU only.

    OMP_NUM_THREADS=1 python scripts/memory_figures.py
    OMP_NUM_THREADS=1 python scripts/memory_figures.py --check-replays 0   # case 0 also with every VAE call run

--check-replays N measures case N a second time running every VAE decoder call (planner.measure(replay=False):
minutes) and prints both figures per stage and tile: the replayed calls must give the same bytes.
"""

import argparse
import os
import re
import sys
import time

from videosys.core import planner
from videosys.models import config_class
from videosys.utils.files import atomic_path, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAN_14B = {"kind": "t2v-14B", "model_path": "Wan-AI/Wan2.1-T2V-14B-Diffusers"}
# (label, family, config fields): every family's release at its published size
CASES = [
    ("Wan2.1-T2V-1.3B, 81x480x832", "wan", {}),
    ("Wan2.1-T2V-14B, 81x720x1280", "wan", WAN_14B),
    ("CogVideoX-2b, 49x480x720", "cogvideox", {}),
    ("CogVideoX-5b, 49x480x720", "cogvideox", {"model_path": "THUDM/CogVideoX-5b"}),
    ("Latte-1, 16x512x512", "latte", {}),
    ("Open-Sora 1.2, 51x480p 9:16", "open-sora", {}),
    ("Open-Sora-Plan v1.2, 29x480x640", "open-sora-plan", {}),
    ("HunyuanVideo-1.5 480p T2V, 121x480x848", "hunyuanvideo-1.5", {}),
    ("CascadeV reconstruction, 16x1024x1024", "cascadev", {}),
]
BUDGETS = ("8GB", "16GB", "24GB", "80GB")  # the goals: Wan2.1-1.3B in 8 GB, Wan2.1-14B and CogVideoX-5b
# in 24 GB, every family in 80 GB


def check_replays(index: int) -> int:
    label, family, fields = CASES[index]
    config = config_class(family)(progress_bar=False, **fields)
    runs = {}
    for replay in (True, False):
        start = time.perf_counter()
        m = planner.measure(config, replay=replay)
        runs[replay] = ({**m.stages, **{f"decode, tiles {t} px": v for t, v in m.tiles.items()}},
                        time.perf_counter() - start)
    print(f"{label}: replayed {runs[True][1]:.1f} s, every call run {runs[False][1]:.1f} s")
    worst = 0.0
    for name, fast in runs[True][0].items():
        slow = runs[False][0][name]
        worst = max(worst, abs(fast - slow) / max(slow, 1))
        print(f"  {name:<22}{planner.gb(fast):>12}{planner.gb(slow):>12}")
    print(f"largest difference {100 * worst:.3f}%")
    return 0 if worst <= 0.01 else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-replays", type=int, metavar="CASE", help="index into CASES")
    args = parser.parse_args(argv)
    if args.check_replays is not None:
        return check_replays(args.check_replays)
    rows, records = [], []
    for label, family, fields in CASES:
        config = config_class(family)(progress_bar=False, **fields)
        choices = {budget: planner.choose(config, budget=planner.parse_bytes(budget)) for budget in BUDGETS}
        m = choices[BUDGETS[0]].measurement  # one measurement for every budget
        cells = [f"{c.plan.describe()} ({planner.gb(planner.peak(m, c.plan))})" if c.plan else "nothing fits"
                 for c in choices.values()]
        resident = planner.peak(m, planner.Plan())
        rows.append(f"| {label} | {planner.gb(resident)} | " + " | ".join(cells) + f" | {m.seconds:.1f} |")
        records.append(dict(case=label, resident_bytes=resident, seconds=round(m.seconds, 1),
                            plans={b: dict(plan=c.plan.describe(), settings=c.plan.settings(),
                                           bytes=planner.peak(m, c.plan)) if c.plan else None
                                   for b, c in choices.items()},
                            stages=m.stages, tiles={str(t): v for t, v in m.tiles.items()},
                            weights={k: w.bytes for k, w in m.parts.items()}))
        print(rows[-1], flush=True)
    table = "\n".join(["| release, size | all resident | " + " | ".join(BUDGETS) + " | planner s |",
                       "|---" * (len(BUDGETS) + 3) + "|", *rows])
    page = os.path.join(ROOT, "docs", "memory.md")
    text = open(page).read()
    text = re.sub(r"(<!-- figures -->\n).*?(<!-- /figures -->)", lambda mt: mt.group(1) + table + "\n" + mt.group(2),
                  text, flags=re.S)
    with atomic_path(page, ".md") as tmp, open(tmp, "w") as f:
        f.write(text)
    write_json(os.path.join(ROOT, "benchmarks", "memory_plan.json"), records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
