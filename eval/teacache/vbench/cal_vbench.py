"""Quality, semantic and total VBench scores from VBench's per-dimension results, as the papers aggregate them.

    python vbench/cal_vbench.py --score-dir vbench_results/latte/baseline [more dirs] [--output scores.json]

Reads every `*_eval_results.json` in each folder (VBench writes `{dimension: [score, per-video]}`;
run_vbench.py writes one file per dimension). No vbench import: this runs anywhere.

Aggregation (VBench, arXiv 2311.17982, as its authors' leaderboard; docs/evaluation.md): each dimension min-max
normalised with VBench's empirical bounds; quality = weighted mean of the
7 quality dimensions (dynamic_degree weighs 0.5), semantic = mean of the 9 semantic
dimensions, total = (4 * quality + 1 * semantic) / 5. A folder missing some dimensions gets
scores over the dimensions it has, and is marked partial.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

QUALITY_DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
                      "dynamic_degree", "aesthetic_quality", "imaging_quality")
SEMANTIC_DIMENSIONS = ("object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
                       "temporal_style", "appearance_style", "overall_consistency")
DIMENSIONS = QUALITY_DIMENSIONS + SEMANTIC_DIMENSIONS

# (min, max) per dimension, VBench's normalisation; (0, 1) where not listed
NORMALIZE = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
WEIGHTS = {"dynamic_degree": 0.5}  # every other dimension weighs 1
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4, 1


def normalize(dimension: str, score: float) -> float:
    lo, hi = NORMALIZE.get(dimension, (0.0, 1.0))
    return (score - lo) / (hi - lo)  # not clipped, as published: a score past a bound leaves [0, 1]


def load_scores(folder: str) -> dict[str, float]:
    """{dimension: raw score} from the `*_eval_results.json` files in one folder."""
    files = sorted(glob.glob(os.path.join(glob.escape(folder), "*_eval_results.json")))
    if not files:
        raise FileNotFoundError(f"no *_eval_results.json in {folder}")
    scores = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for dimension, value in data.items():
            if dimension not in DIMENSIONS:
                raise ValueError(f"{path}: unknown VBench dimension {dimension!r}")
            score = value[0] if isinstance(value, (list, tuple)) else value
            scores[dimension] = float(score)
    return scores


def _weighted_mean(values: dict[str, float], dimensions) -> float | None:
    present = [d for d in dimensions if d in values]
    if not present:
        return None
    total_weight = sum(WEIGHTS.get(d, 1.0) for d in present)
    return sum(values[d] * WEIGHTS.get(d, 1.0) for d in present) / total_weight


def aggregate(scores: dict[str, float]) -> dict:
    """Raw dimension scores -> normalised scores and quality / semantic / total (fractions in [0, 1])."""
    normalized = {d: normalize(d, s) for d, s in scores.items()}
    quality = _weighted_mean(normalized, QUALITY_DIMENSIONS)
    semantic_values = {d: v for d, v in normalized.items() if d in SEMANTIC_DIMENSIONS}
    semantic = (sum(semantic_values.values()) / len(semantic_values)) if semantic_values else None  # plain mean
    total = None
    if quality is not None and semantic is not None:
        total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    missing = [d for d in DIMENSIONS if d not in scores]
    return {"quality_score": quality, "semantic_score": semantic, "total_score": total,
            "partial": bool(missing), "missing_dimensions": missing, "raw": scores, "normalized": normalized}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def format_table(results: dict[str, dict]) -> str:
    rows = [("scores", "total", "quality", "semantic", "dimensions")]
    for name, r in results.items():
        rows.append((name, _pct(r["total_score"]), _pct(r["quality_score"]), _pct(r["semantic_score"]),
                     f"{len(DIMENSIONS) - len(r['missing_dimensions'])}/{len(DIMENSIONS)}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="VBench quality / semantic / total from per-dimension results.")
    p.add_argument("--score-dir", "--score_dir", nargs="+", required=True,
                   help="folders of *_eval_results.json (one per variant)")
    p.add_argument("--output", help="JSON file for all folders' scores")
    args = p.parse_args(argv)
    results = {}
    try:
        for folder in args.score_dir:
            results[os.path.basename(os.path.normpath(folder))] = aggregate(load_scores(folder))
    except (FileNotFoundError, ValueError) as err:
        print(f"cal_vbench.py: error: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    for name, r in results.items():
        if r["partial"]:
            print(f"{name}: partial, missing {', '.join(r['missing_dimensions'])}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
