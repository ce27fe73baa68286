"""The planner's predictions for the goal cases of docs/memory.md, written into that page's table (between its
markers) and to benchmarks/memory_plan.json. No weights, CPU only: a few minutes in all.

    OMP_NUM_THREADS=1 python scripts/memory_figures.py
"""

import os
import re
import sys

from videosys.core import planner
from videosys.models import config_class
from videosys.utils.files import atomic_path, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (label, family, config fields, budget): the issue's goal cases, at the releases' published sizes
CASES = [
    ("Wan2.1-T2V-1.3B, 81x480x832", "wan", {}, "8GB"),
    ("Wan2.1-T2V-14B, 81x720x1280", "wan", {"kind": "t2v-14B", "model_path": "Wan-AI/Wan2.1-T2V-14B-Diffusers"},
     "24GB"),
    ("CogVideoX-5b, 49x480x720", "cogvideox", {"model_path": "THUDM/CogVideoX-5b"}, "24GB"),
    ("CogVideoX-2b, 49x480x720", "cogvideox", {}, "80GB"),
    ("Latte-1, 16x512x512", "latte", {}, "80GB"),
    ("Open-Sora 1.2, 51x480p 9:16", "open-sora", {}, "80GB"),
    ("Open-Sora-Plan v1.2, 29x480x640", "open-sora-plan", {}, "80GB"),
    ("HunyuanVideo-1.5 480p T2V, 121x480x848", "hunyuanvideo-1.5", {}, "80GB"),
    ("Wan2.1-T2V-1.3B, 81x480x832", "wan", {}, "80GB"),
    ("Wan2.1-T2V-14B, 81x720x1280", "wan", {"kind": "t2v-14B", "model_path": "Wan-AI/Wan2.1-T2V-14B-Diffusers"},
     "80GB"),
    ("CogVideoX-5b, 49x480x720", "cogvideox", {"model_path": "THUDM/CogVideoX-5b"}, "80GB"),
]


def main() -> int:
    rows, records = [], []
    for label, family, fields, budget in CASES:
        config = config_class(family)(progress_bar=False, **fields)
        choice = planner.choose(config, budget=planner.parse_bytes(budget))
        m = choice.measurement
        resident = planner.peak(m, planner.Plan())
        plan = choice.plan.describe() if choice.plan else "nothing fits"
        fitted = planner.gb(planner.peak(m, choice.plan)) if choice.plan else "-"
        rows.append(f"| {label} | {budget} | {planner.gb(resident)} | {plan} | {fitted} |")
        records.append(dict(case=label, budget=budget, resident_bytes=resident, plan=plan,
                            plan_settings=choice.plan.settings() if choice.plan else None,
                            plan_bytes=planner.peak(m, choice.plan) if choice.plan else None,
                            stages=m.stages, weights={k: w.bytes for k, w in m.parts.items()},
                            seconds=round(m.seconds, 1)))
        print(rows[-1], flush=True)
    table = "\n".join(["| case | budget | all resident | plan | plan's peak |", "|---|---|---|---|---|", *rows])
    page = os.path.join(ROOT, "docs", "memory.md")
    text = open(page).read()
    text = re.sub(r"(<!-- figures -->\n).*?(\n<!-- /figures -->)", lambda mt: mt.group(1) + table + mt.group(2), text,
                  flags=re.S)
    with atomic_path(page, ".md") as tmp, open(tmp, "w") as f:
        f.write(text)
    write_json(os.path.join(ROOT, "benchmarks", "memory_plan.json"), records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
