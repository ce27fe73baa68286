"""Speed-up against fidelity (PSNR, LPIPS) for the variants of one family, as a PNG and a table.

Command line: `python eval/teacache/plot_frontier.py --family-dir samples/latte [--output frontier.png]`.
Reads, for every variant folder under --family-dir (as the batch-generation scripts lay them
out): `stats.json` (per-video timings, written by experiments/*.py) and `metrics.json`
(written by common_metrics/eval.py against the baseline). Speed-up = mean time of the
baseline / mean time of the variant, over the videos both have, leaving out each engine's
first video (its warm-up) where others remain (`total_s`: encode, denoise and decode;
--time-key denoise_s for the transformer loop alone). With --vbench-scores (cal_vbench.py's
--output, keyed by variant folder name) a third panel shows the VBench total.
"""

from __future__ import annotations

import os
import sys

STATS_FILE, METRICS_FILE = "stats.json", "metrics.json"


def load_json(path: str) -> dict | None:
    """The file's JSON, None when it is not there; one that does not parse is a ValueError naming it and the line."""
    from videosys.utils.files import load_json as load

    return load(path) if os.path.exists(path) else None


def mean_time(stats: dict, names, key: str) -> float:
    values = [stats["videos"][n][key] for n in names]
    return sum(values) / len(values)


def frontier(family_dir: str, baseline: str = "baseline", time_key: str = "total_s",
             vbench: dict | None = None) -> list[dict]:
    """One point per variant: speed-up, PSNR, SSIM, LPIPS, VBench total if given (the baseline is
    speed-up 1, LPIPS 0)."""
    base_stats = load_json(os.path.join(family_dir, baseline, STATS_FILE))
    if base_stats is None:
        raise FileNotFoundError(f"no {STATS_FILE} in {os.path.join(family_dir, baseline)}: generate the baseline first")
    points = []
    for variant in sorted(os.listdir(family_dir)):
        folder = os.path.join(family_dir, variant)
        if variant == baseline or not os.path.isdir(folder):
            continue
        stats, metrics = load_json(os.path.join(folder, STATS_FILE)), load_json(os.path.join(folder, METRICS_FILE))
        if stats is None or metrics is None:
            print(f"{variant}: skipped (needs {STATS_FILE} and {METRICS_FILE})", file=sys.stderr)
            continue
        # a video a killed run saved without its stats ("recovered") has no timings
        common = sorted(n for n in set(stats["videos"]) & set(base_stats["videos"])
                        if time_key in stats["videos"][n] and time_key in base_stats["videos"][n])
        warm = [n for n in common if not (stats["videos"][n].get("first_of_engine")
                                          or base_stats["videos"][n].get("first_of_engine"))]
        common = warm or common  # an engine's first video pays its warm-up: timed only when nothing else is
        if not common:
            print(f"{variant}: skipped (no timed video shared with {baseline})", file=sys.stderr)
            continue
        point = {"variant": variant, "videos": len(common),
                 "speedup": mean_time(base_stats, common, time_key) / mean_time(stats, common, time_key)}
        for m in ("psnr", "ssim", "lpips"):
            point[m] = metrics["metrics"].get(m, {}).get("value")
        point["vbench"] = (vbench or {}).get(variant, {}).get("total_score")
        points.append(point)
    return points


OPTIONAL_PANELS = (("ssim", "SSIM vs baseline", "higher is better"), ("vbench", "VBench total", "higher is better"),
                   ("accuracy", "prompt accuracy (tracker)", "higher is better"))


COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
           "tab:olive", "tab:cyan"]


def method_of(variant: str) -> str:
    """'teacache-0.3' -> 'teacache', 'pab-246' -> 'pab', 'teacache-cal-0.1' -> 'teacache-cal': the points of
    one method (its thresholds / presets) share a line."""
    return variant.rsplit("-", 1)[0]


def plot(points: list[dict], output: str, title: str, baseline_vbench: float | None = None,
         baselines: dict | None = None, optional: tuple[str, ...] = ("vbench",),
         xlabel: str = "speed-up over baseline (x)") -> str:
    """One panel per metric against speed-up: PSNR and LPIPS always, then each of `optional` (ssim,
    vbench, accuracy) that some point has. `baselines` puts the baseline's own value (a star at 1x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baselines = {"lpips": 0.0, "vbench": baseline_vbench, **(baselines or {})}
    panels = [("psnr", "PSNR (dB) vs baseline", "higher is better"), ("lpips", "LPIPS vs baseline", "lower is better")]
    panels += [panel for panel in OPTIONAL_PANELS
               if panel[0] in optional and any(p.get(panel[0]) is not None for p in points)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (metric, label, better) in zip(axes, panels):
        shown = sorted((p for p in points if p.get(metric) is not None), key=lambda p: p["speedup"])
        line_of = lambda p: p.get("method") or method_of(p["variant"])  # noqa: E731  (a point may name its method)
        methods = sorted({line_of(p) for p in shown})
        for colour, method in zip(COLOURS * len(methods), methods):  # one line per method (its thresholds/presets)
            mine = [p for p in shown if line_of(p) == method]
            ax.plot([p["speedup"] for p in mine], [p[metric] for p in mine], color=colour, alpha=0.4)
            ax.scatter([p["speedup"] for p in mine], [p[metric] for p in mine], color=colour, zorder=3, label=method)
        if len(methods) > 1:
            ax.legend(fontsize=8)
        for p in shown:
            ax.annotate(p["variant"], (p["speedup"], p[metric]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        base_value = baselines.get(metric)
        if base_value is not None:
            ax.scatter([1.0], [base_value], color="black", marker="*", s=80, zorder=3)
            ax.annotate("baseline", (1.0, base_value), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.set_title(better, fontsize=9)
        ax.grid(alpha=0.3)
    return save_figure(fig, title, output)


def format_table(points: list[dict]) -> str:
    rows = [("variant", "speed-up", "PSNR", "SSIM", "LPIPS", "VBench", "videos")]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for p in points:
        rows.append((p["variant"], f"{p['speedup']:.2f}x", fmt(p["psnr"], ".2f"), fmt(p["ssim"], ".4f"),
                     fmt(p["lpips"], ".4f"), fmt(None if p.get("vbench") is None else 100 * p["vbench"], ".2f"),
                     str(p["videos"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (speed-up, quality) points no other point beats on both (higher is better on both), by speed-up."""
    front = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front[::-1]


def pareto_plot(results: dict, output: str, title: str, axes: dict) -> str:
    """One panel per speed-up axis (axes: key -> (label, speed function of a row)): each framework's Pareto front
    of PSNR against that speed-up, its points marked, the uncached video at 1x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frameworks = sorted({r["framework"] for r in results.values()})
    fig, panels = plt.subplots(1, len(axes), figsize=(6 * len(axes), 4.5))
    for ax, (label, speed) in zip(panels, axes.values()):
        for colour, framework in zip(COLOURS, frameworks):
            rows = [(v, r) for v, r in results.items() if r["framework"] == framework and r.get("psnr") is not None]
            front = pareto([(speed(r), min(r["psnr"], 60.0)) for _, r in rows])
            ax.plot([x for x, _ in front], [y for _, y in front], color=colour, marker="o", label=framework)
            for x, y in front:
                name = next(v for v, r in rows if speed(r) == x and min(r["psnr"], 60.0) == y)
                ax.annotate(name.split(":", 1)[-1], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color=colour)
        for target in (1.5, 2.0, 2.5, 3.0):
            ax.axvline(target, color="grey", lw=0.6, ls=":")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR (dB) vs the framework's uncached video (60: identical)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, title, output)


def save_figure(fig, title: str, output: str) -> str:
    """The figure with its title, written whole or not at all (a PNG), and closed."""
    import matplotlib.pyplot as plt

    from videosys.utils.files import atomic_path

    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(output, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return output
