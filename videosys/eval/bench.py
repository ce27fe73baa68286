"""`videosys bench`: every registered cache at several settings on one model, against no cache, and the peers'.

    videosys bench                                          # the demo model, every method's registered sweep
    videosys bench --peers --threads 1                      # and diffusers' caches on the same checkpoint
    videosys bench --model latte --preset tiny --prompt-set builtin --variants none pab forecast-0.2
    videosys bench --model cogvideox --model-path THUDM/CogVideoX-2b --device cuda --prompt-file prompts.txt

One engine is built; the caches are switched on it between runs (no weight reloads). Per variant: end-to-end
and transformer seconds per video, speed-up over no cache (a peer's over its own framework's uncached run),
the steps computed, whether it may reuse the last step ("last step": reuse / compute, from each method's
registered `reuses_last_step`), PSNR / SSIM / LPIPS of each video against the uncached video of the same
prompt and seed in the same framework (frames in [0, 1], averaged per frame: eval/teacache/common_metrics' protocol;
LPIPS when its weights are available) and, with the demo prompts, the colour-and-direction accuracy of the demo tracker.
Times are medians over --repeats rounds that each generate one video with every variant in turn (ours and
the peers' interleaved, the order rotated each round, after a warm-up round), so drift of the machine hits
every variant alike. Writes JSON, a PNG of speed-up vs PSNR and vs LPIPS, and prints the table and the
frontier: the best variant at each speed-up.

`--pairs` runs every allowed pair of the members (--variants, default every registered method's pair names:
registry.CacheMethod.pair_members) next to the members alone, on the *last* --prompts prompts of the set (held back:
tuning uses the first ones), and reports a pair worse than both of its members (PSNR below both), the PSNR its
members' errors would give if they just added (10^(-a/10) + 10^(-b/10)), and a member that dominates it (at
least as fast and better). The pairs registry.check_combination refuses are listed with its reason.
"""

import argparse
import itertools
import math
import os
import statistics

import torch

from videosys.eval import demo as eval_demo
from videosys.eval import peers as peer_caches
from videosys.eval.metrics import average_per_frame, video_metrics
from videosys.eval.runs import add_model_args, model_config, prompt_list, run_reporting_errors
from videosys.utils.files import write_json

TARGETS = (1.2, 1.5, 2.0, 2.5, 3.0)  # speed-ups the frontier tables read, wall and counted work


# ---------------------------------------------------------------- variants


def cache_spec(variant: str, coefficients=None):
    """A variant name as engine.set_cache takes it; "teacache-cal-<threshold>" is TeaCache with the
    coefficients of a calibration (scripts/calibrate_teacache.py, --coefficients); "a+b" is both."""
    if "+" in variant:
        return [cache_spec(part, coefficients) for part in variant.split("+")]
    if not variant.startswith("teacache-cal-"):
        return variant
    if coefficients is None:
        raise ValueError(f"{variant} needs --coefficients (a scripts/calibrate_teacache.py JSON)")
    try:
        threshold = float(variant[len("teacache-cal-"):])
    except ValueError:
        raise ValueError(f"{variant}: the threshold after teacache-cal- must be a number") from None
    return {"method": "teacache", "threshold": threshold, "coefficients": coefficients}


def method_of(variant: str) -> str:
    """The method a variant belongs to (its points share a line in the plot): "teacache-0.3" -> "teacache",
    "forecast-i3-o2" -> "forecast", "diffusers:taylorseer-lite-3" -> "diffusers:taylorseer-lite"."""
    from videosys.cache.registry import method_for_name

    for prefix in peer_caches.PREFIXES.values():
        if variant.startswith(prefix):
            return prefix + peer_caches.method_of(variant[len(prefix):])
    if "+" in variant:
        return "+".join(method_of(part) for part in variant.split("+"))
    if variant.startswith("teacache-cal-"):
        return "teacache-cal"
    try:
        return method_for_name(variant)[0].name
    except ValueError:
        return variant


def reuses_last_step(variant: str) -> bool | None:
    """Whether a variant of ours may skip or reuse the generation's last step (one of its methods may:
    registry.CacheMethod.reuses_last_step); None for "none" and for a name no registered method has."""
    from videosys.cache.registry import METHODS

    names = ["teacache" if m == "teacache-cal" else m for m in method_of(variant).split("+")]
    flags = [METHODS[n].reuses_last_step for n in names if n in METHODS]
    return any(flags) if flags else None


# ---------------------------------------------------------------- runners: ours and diffusers'


class EngineRunner:
    """Our engine, one cache variant at a time; `meter` sums the transformer's wall time (and FLOPs, while
    counting) per generation."""

    framework = "videosys"

    def __init__(self, engine, coefficients=None):
        from videosys.cache import METHODS
        from videosys.eval.work import ForwardMeter

        self.engine, self.coefficients, self.methods = engine, coefficients, METHODS
        self.meter = ForwardMeter(engine.pipeline.transformer)

    @property
    def spent(self) -> float:
        return self.meter.spent

    def set_cache(self, variant: str) -> None:
        self.engine.set_cache(cache_spec(variant, self.coefficients))

    def generate(self, prompt: str, seed: int):
        self.meter.reset()
        out = self.engine.generate(prompt, seed=seed)
        stats = {name: value for name, value in out.stats.items() if name in self.methods}
        return out.video[0].numpy(), out.stats["total_s"], stats


def time_rounds(entries: list[tuple], jobs: list[tuple], rounds: int) -> dict:
    """Median end-to-end and transformer seconds per video of each (name, runner, variant), timed in
    interleaved rounds: every entry once per round, the order rotated each round, round r on job r.
    Round 0 warms every entry up and is not counted."""
    times = {name: [] for name, _, _ in entries}
    for r in range(rounds + 1):
        prompt, seed = jobs[r % len(jobs)]
        shift = r % len(entries)
        for name, runner, variant in entries[shift:] + entries[:shift]:
            runner.set_cache(variant)
            _, total, _ = runner.generate(prompt, seed)
            if r:
                times[name].append((total, runner.spent))
    return {name: {"total_s": statistics.median(t for t, _ in runs),
                   "transformer_s": statistics.median(s for _, s in runs)} for name, runs in times.items()}


def lpips_model_or_none(device):
    try:
        from videosys.eval.lpips import load_lpips

        return load_lpips(device=device)
    except (FileNotFoundError, RuntimeError, OSError) as err:
        print(f"(LPIPS skipped: {str(err).splitlines()[0]})")
        return None


def fidelity(baseline: list, videos: list, lpips, device) -> dict:
    """PSNR / SSIM / LPIPS of each video against the baseline video of the same job, averaged per frame."""
    names = ("psnr", "ssim", "lpips") if lpips is not None else ("psnr", "ssim")
    curves = {name: [] for name in names}
    for ref, video in zip(baseline, videos):
        for name, values in video_metrics(ref, video, names, lpips, device=device).items():
            curves[name].append(values)
    return {name: average_per_frame(values)[0] for name, values in curves.items()}


# ---------------------------------------------------------------- reporting


def computed_of(row: dict) -> str:
    """"23/50": the steps a step-level method computed in the last video; "all" when none skips steps."""
    for stats in row.get("caches", {}).values():
        if isinstance(stats, dict) and "computed_steps" in stats:
            return f"{stats['computed_steps']}/{stats['computed_steps'] + stats['reused_steps']}"
    return "all" if row.get("framework") == "videosys" else "-"


def last_step_of(row: dict) -> str:
    """"reuse": the variant may skip or reuse the last step, "compute": it always computes it, "-": unknown."""
    flag = row.get("reuses_last_step")
    return "-" if flag is None else "reuse" if flag else "compute"


def table(results: dict, with_lpips: bool, with_accuracy: bool) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    width = max([15] + [len(v) + 2 for v in results])
    head = (f"{'variant':<{width}}{'total s':>9}{'transf. s':>10}{'speed-up':>9}{'work':>7}{'computed':>9}"
            f"{'last step':>10}{'PSNR':>8}{'SSIM':>8}")
    head += f"{'LPIPS':>8}" if with_lpips else ""
    head += f"{'accuracy':>9}" if with_accuracy else ""
    lines = [head]
    for variant, row in results.items():
        if "error" in row:
            lines.append(f"{variant:<{width}}failed: {row['error'][:100]}")
            continue
        line = (f"{variant:<{width}}{row['total_s']:>9.3f}{row['transformer_s']:>10.3f}{row['speedup']:>8.2f}x"
                f"{fmt(row.get('work'), '.3f'):>7}{computed_of(row):>9}{last_step_of(row):>10}{fmt(row.get('psnr'), '.2f'):>8}"
                f"{fmt(row.get('ssim'), '.4f'):>8}")
        line += f"{fmt(row.get('lpips'), '.4f'):>8}" if with_lpips else ""
        line += f"{fmt(row.get('accuracy'), '.3f'):>9}" if with_accuracy else ""
        lines.append(line)
    return "\n".join(lines)


AXES = {"speedup": "end-to-end wall speed-up", "transformer": "transformer wall speed-up",
        "work": "counted-work speed-up (uncached FLOPs / FLOPs)"}


def speed(row: dict, axis: str) -> float:
    """A row's speed-up on an axis: wall, end to end ("speedup") or the transformer's calls alone ("transformer":
    where the VAE and text encoder dominate a small model's time), or counted work (uncached FLOPs over its FLOPs)."""
    if axis == "work":
        return 1.0 / row["work"]
    return row["transformer_speedup" if axis == "transformer" else "speedup"]


def best_at(results: dict, target: float, metric: str, framework: str | None = None, axis: str = "speedup") -> str | None:
    """The variant with the best `metric` among those at least `target` times faster than their baseline on
    `axis` (PSNR: highest, LPIPS: lowest), of one framework or of all; None if none is that fast."""
    rows = [(v, r) for v, r in results.items() if r.get(metric) is not None and speed(r, axis) >= target
            and (framework is None or r["framework"] == framework)]
    if not rows:
        return None
    sign = -1 if metric == "lpips" else 1
    return max(rows, key=lambda vr: sign * vr[1][metric])[0]


def frontier(results: dict, targets=TARGETS, axis: str = "speedup") -> list[dict]:
    """Per target speed-up on `axis`: the best variant overall on PSNR and on LPIPS, and the best of each framework."""
    frameworks = sorted({r["framework"] for r in results.values()})
    out = []
    for target in targets:
        entry = {"speedup_at_least": target, "axis": axis}
        for metric in ("psnr", "lpips"):
            entry[metric] = best_at(results, target, metric, axis=axis)
            for framework in frameworks:
                entry[f"{metric}_{framework}"] = best_at(results, target, metric, framework, axis)
        out.append(entry)
    return out


def frontier_table(results: dict, entries: list[dict]) -> str:
    """One line per target speed-up: the best PSNR and the best LPIPS there, each framework's best, '*' marking
    the overall best."""
    axis = entries[0].get("axis", "speedup") if entries else "speedup"

    def cell(variant, metric):
        if variant is None:
            return "-"
        row = results[variant]
        return f"{variant} {row[metric]:.{2 if metric == 'psnr' else 4}f} @{speed(row, axis):.2f}x"

    frameworks = sorted({r["framework"] for r in results.values()})
    lines = []
    for e in entries:
        parts = []
        for metric in ("psnr", "lpips"):
            best = e[metric]
            winners = [e[f"{metric}_{f}"] for f in frameworks]
            cells = [("*" if w == best and best is not None else " ") + cell(w, metric) for w in winners]
            parts.append(f"{metric.upper()}: " + " | ".join(cells))
        lines.append(f">= {e['speedup_at_least']:.2f}x  " + "   ".join(parts))
    return (f"best at each {AXES[axis]} ({' | '.join(frameworks)}; * = best overall)\n" + "\n".join(lines))


# ---------------------------------------------------------------- the command


def add_arguments(parser) -> None:
    from videosys.cache import choices

    add_model_args(parser)
    parser.add_argument("--variants", nargs="+",
                        help="cache specs (default: 'none' and every registered method's sweep): "
                             f"{', '.join(choices())}, "
                             "teacache-cal-<threshold> (with --coefficients); a+b runs two methods at once")
    parser.add_argument("--peers", nargs="*", metavar="PEER",
                        help="also the peers' caches on the same checkpoint (diffusers' hooks; on Wan also "
                             "cache-dit's DBCache), timed in the same rounds (no names: latte: "
                             f"{' '.join(peer_caches.VARIANTS['latte'])}; wan: {' '.join(peer_caches.VARIANTS['wan'])})")
    parser.add_argument("--coefficients", help="JSON of scripts/calibrate_teacache.py: its polynomial for "
                                               "the teacache-cal-<threshold> variants")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds --first-seed .. --first-seed + --seeds - 1 (report on seeds a setting was not tuned on)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timing rounds: each times every variant once, interleaved (median per variant)")
    parser.add_argument("--pairs", action="store_true",
                        help="every allowed pair of the members (--variants, default every registered method's) beside "
                             "the members alone, on the last --prompts prompts (held back); reports pairs worse than both")
    parser.add_argument("--output", default="outputs/bench_cache.json", help="JSON; the PNG goes beside it")


def _has_settings(variant: str, config) -> bool:
    """Whether this model has numbers for a registered variant: MagCache's calibrated ratios, PAB's or FasterCache's
    published settings (none for Wan's releases and its demo: those methods need explicit settings there)."""
    from videosys.cache import configs_from_spec

    try:
        config.resolve_cache(variant)
        configs_from_spec(variant, config.published_cache_settings())
    except ValueError:  # NeedsCalibration, or "no published ... defaults for this model"
        return False
    return True


def pair_variants(members: list[str], published: dict) -> tuple[list[str], list[str], dict]:
    """(the members that build for this model, every pair "a+b" of them check_combination allows, the refused pairs:
    "a+b" -> its reason). Members: every registered method's pair names when none are given; one the model has no
    numbers for (NeedsCalibration, no published setting) or that acts nowhere (an observer) is left out."""
    from videosys.cache import METHODS, configs_from_spec
    from videosys.cache.registry import method_of

    given = bool(members)
    members = members or [n for m in METHODS.values() for n in m.pair_members]
    usable = []
    for name in members:
        try:
            configs = configs_from_spec(name, published)
        except ValueError:
            if given:
                raise
            continue
        if all(method_of(c).cache_cls.acts_at(c) for c in configs):
            usable.append(name)
    pairs, refused = [], {}
    for a, b in itertools.combinations(usable, 2):
        try:
            configs_from_spec(f"{a}+{b}", published)
            pairs.append(f"{a}+{b}")
        except ValueError as err:
            refused[f"{a}+{b}"] = str(err)
    return usable, pairs, refused


def additive_psnr(a: float, b: float) -> float:
    """The PSNR of two approximations whose errors (MSE) just add."""
    return -10 * math.log10(10 ** (-a / 10) + 10 ** (-b / 10))


def pair_rows(results: dict) -> list[dict]:
    """Per pair variant "a+b" whose members ran alone: PSNR and speed-up of each, whether the pair is worse than both,
    the additive PSNR, and a member at least as fast with a better PSNR (the pair is then dominated)."""
    rows = []
    for variant, row in results.items():
        parts = variant.split("+")
        if len(parts) != 2 or not all(p in results and results[p].get("psnr") is not None for p in parts):
            continue
        members = [results[p] for p in parts]
        psnr = row["psnr"]
        dominated = [p for p, m in zip(parts, members) if m["psnr"] > psnr and m["speedup"] >= row["speedup"]]
        rows.append({"pair": variant, "members": parts, "psnr": psnr, "speedup": row["speedup"],
                     "member_psnr": [m["psnr"] for m in members], "member_speedup": [m["speedup"] for m in members],
                     "worse_than_both": psnr < min(m["psnr"] for m in members),
                     "additive_psnr": additive_psnr(*(m["psnr"] for m in members)), "dominated_by": dominated})
    return rows


def pairs_table(rows: list[dict]) -> str:
    width = max([6] + [len(r["pair"]) + 2 for r in rows])
    lines = [f"{'pair':<{width}}{'PSNR':>7}{'speed-up':>9}{'members PSNR':>15}{'members x':>13}{'additive':>9}  verdict"]
    for r in rows:
        verdict = ("WORSE THAN BOTH" if r["worse_than_both"] else "ok") + (
            f", dominated by {' and '.join(r['dominated_by'])}" if r["dominated_by"] else "")
        a, b = r["member_psnr"]
        sa, sb = r["member_speedup"]
        lines.append(f"{r['pair']:<{width}}{r['psnr']:>7.2f}{r['speedup']:>8.2f}x{a:>8.2f}/{b:<6.2f}"
                     f"{sa:>6.2f}/{sb:<5.2f}x{r['additive_psnr']:>8.2f}  {verdict}")
    return "\n".join(lines)


def check(args, config) -> list[str]:
    """Our variants, 'none' first; every name and option checked before any weight load."""
    if args.first_seed < 0:
        raise ValueError(f"--first-seed must be >= 0, got {args.first_seed}")
    from videosys.cache import configs_from_spec, sweep_names

    if getattr(args, "pairs", False):
        if args.peers is not None:
            raise ValueError("--pairs runs our methods only: leave out --peers")
        members, pairs, args.refused_pairs = pair_variants(
            [v for v in args.variants or [] if v != "none"], config.published_cache_settings())
        if not pairs:
            raise ValueError(f"--pairs: no two of {members} may run together (check_combination)")
        return ["none", *members, *pairs]
    variants = list(args.variants) if args.variants else sweep_names()
    if not args.variants:  # the default sweep: the methods this model has numbers for (MagCache: calibrated ratios)
        variants = [v for v in variants if v == "none" or _has_settings(v, config)]
    if "none" not in variants:
        raise ValueError("--variants must include none (the baseline every other variant is compared with)")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    coefficients = [0.0] if args.coefficients else None  # the names only; the file is read later
    for variant in variants:
        configs_from_spec(cache_spec(variant, coefficients), config.published_cache_settings())
    if args.peers is not None:
        if args.model not in peer_caches.VARIANTS:
            raise ValueError(f"--peers runs diffusers' own pipeline on the checkpoint: only with --model "
                             f"{' or '.join(peer_caches.VARIANTS)}")
        for peer in args.peers:
            peer_caches.cache_config(peer, model=args.model)
    return ["none"] + [v for v in variants if v != "none"]


def peer_entries(peers: list[str] | None, config, model: str, jobs: list) -> list[tuple]:
    """(name, runner, variant) of each peer variant, with each framework's uncached run first: diffusers' pipeline
    and, for cache-dit's variants, a second one cache-dit patches."""
    if peers is None:
        return []
    entries = []
    for framework in ("diffusers", "cache-dit"):
        mine = [p for p in peers if peer_caches.framework_of(p) == framework]
        if not mine:
            continue
        runner = peer_caches.DiffusersRunner(peer_caches.folder_of(config), config, model, framework,
                                             calibration_job=(jobs[0][0], 0))
        entries += [(peer_caches.PREFIXES[framework] + p, runner, p) for p in ["none", *mine]]
    return entries


def runs(entry: tuple, job: tuple, results: dict) -> bool:
    """Whether a peer variant generates at all (one video of the first job); if not, its row says why. Ours are
    checked before any compute (check) and raise."""
    name, runner, variant = entry
    if runner.framework == "videosys" or variant == "none":
        return True
    try:
        runner.set_cache(variant)
        runner.generate(*job)
    except Exception as err:  # noqa: BLE001  (the peer's own failure, reported in its row)
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        print(f"{name}: failed ({message})", flush=True)
        results[name] = {"framework": runner.framework, "variant": variant, "method": method_of(name),
                         "error": message}
        return False
    return True


def on_this_model(runner, variants: list[str]) -> list[str]:
    """--pairs: the default members a loaded model refuses (Cache.check_model: Skip-Cache without skip branches) and
    the pairs with them left out."""
    refused = set()
    for variant in variants:
        if "+" not in variant:
            try:
                runner.set_cache(variant)
            except ValueError as err:
                print(f"(--pairs: {variant} left out: {err})")
                refused.add(variant)
    return [v for v in variants if not refused & set(v.split("+"))]


def held_back(args) -> list[str]:
    """The last --prompts prompts of the set (all of it without --prompts): prompts no tuning looked at."""
    prompts = prompt_list(argparse.Namespace(**{**vars(args), "prompts": None}))
    return prompts[-args.prompts:] if args.prompts else prompts


def run(args) -> int:
    from videosys.utils.files import check_writable_folder

    check_writable_folder(os.path.dirname(args.output) or ".", "--output", args.output)  # before any weight loads
    config = model_config(args)
    variants = check(args, config)
    prompts = held_back(args) if getattr(args, "pairs", False) else prompt_list(args)
    jobs = [(prompt, seed) for prompt in prompts for seed in range(args.first_seed, args.first_seed + args.seeds)]
    with_accuracy = args.prompt_set == "demo" and not getattr(args, "prompt_file", None)
    device = config.torch_device()
    coefficients = None
    if args.coefficients:
        from videosys.utils.files import load_json

        data = load_json(args.coefficients, "--coefficients")  # a parse error names the file and line
        if not isinstance(data, dict) or "coefficients" not in data:
            raise ValueError(f"{args.coefficients}: no \"coefficients\" key (scripts/calibrate_teacache.py writes it)")
        coefficients = data["coefficients"]
    peers = None if args.peers is None else [p for p in (args.peers or peer_caches.VARIANTS[args.model]) if p != "none"]
    if peers is not None and peer_caches.folder_of(config) is None:
        raise ValueError("--peers needs a checkpoint folder diffusers can load (the demo preset or --model-path)")
    lpips = lpips_model_or_none(device)

    from videosys import VideoSysEngine

    with VideoSysEngine(config) as engine:
        ours = EngineRunner(engine, coefficients)
        if getattr(args, "pairs", False):
            variants = on_this_model(ours, variants)
        entries = [(v, ours, v) for v in variants] + peer_entries(peers, config, args.model, jobs)
        results, baselines = {}, {}
        entries = [e for e in entries if runs(e, jobs[0], results)]  # a peer that fails is reported, not timed
        timings = time_rounds(entries, jobs, args.repeats)
        for name, runner, variant in entries:
            framework = runner.framework
            runner.set_cache(variant)
            videos, stats, flops = [], {}, []
            runner.meter.counting = True  # counted work: this pass only (the counter slows the timed rounds)
            for prompt, seed in jobs:
                video, _, stats = runner.generate(prompt, seed)
                videos.append(video)
                flops.append(runner.meter.flops)
            runner.meter.counting = False
            row = {"framework": framework, "variant": variant, "method": method_of(name), "caches": stats,
                   "reuses_last_step": reuses_last_step(variant) if runner is ours else None, **timings[name],
                   "flops": statistics.mean(flops)}
            if variant == "none":
                baselines[framework] = (name, videos)
            else:
                row.update(fidelity(baselines[framework][1], videos, lpips, device))
            if with_accuracy:
                rows = [eval_demo.row(f"{p}-{s}", p, v) for (p, s), v in zip(jobs, videos)]
                row["accuracy_detail"] = eval_demo.score(rows)
                row["accuracy"] = row["accuracy_detail"]["both"]
            results[name] = row
            print(f"{name}: {row['total_s']:.3f} s/video", flush=True)

    for row in results.values():
        if "error" in row:
            continue
        base = results[baselines[row["framework"]][0]]
        row["work"] = row["flops"] / base["flops"]  # counted work: FLOPs over the framework's uncached FLOPs
        row["speedup"] = base["total_s"] / row["total_s"]
        row["transformer_speedup"] = base["transformer_s"] / row["transformer_s"]
        row["speedup_vs_videosys"] = results["none"]["total_s"] / row["total_s"]
    name = args.model_path or args.preset
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"{args.model} ({name}) on {device}, {config.num_inference_steps} steps, {config.num_frames}x{config.height}x"
          f"{config.width}, {len(jobs)} videos per variant, times: median of {args.repeats} interleaved rounds "
          f"({torch.get_num_threads()} threads, load average {load})")
    print(table(results, lpips is not None, with_accuracy))
    fronts = {axis: frontier(results, axis=axis) for axis in AXES}
    for entries in fronts.values():
        print(frontier_table(results, entries))

    report = {"model": args.model, "preset": args.preset, "model_path": args.model_path, "device": str(device),
              "steps": config.num_inference_steps, "prompt_set": args.prompt_set, "prompts": prompts,
              "seeds": args.seeds, "first_seed": args.first_seed, "repeats": args.repeats, "threads": torch.get_num_threads(), "load_average": load,
              "results": results, "frontier": fronts["speedup"],
              "frontier_transformer": fronts["transformer"], "frontier_work": fronts["work"]}
    if getattr(args, "pairs", False):
        report["pairs"], report["refused_pairs"] = pair_rows(results), args.refused_pairs
        print(pairs_table(report["pairs"]))
        worse = [r["pair"] for r in report["pairs"] if r["worse_than_both"]]
        print(f"{len(worse)} of {len(report['pairs'])} pairs worse than both members: {', '.join(worse) or 'none'}; "
              f"{len(args.refused_pairs)} refused by check_combination")
    write_json(args.output, report)
    png = os.path.splitext(args.output)[0] + ".png"
    from videosys.eval.frontier import plot

    points = [{**row, "variant": v} for v, row in results.items() if row["variant"] != "none" and "error" not in row]
    title = f"{args.model} ({os.path.basename(os.path.normpath(str(name)))})"
    common = dict(baselines={"accuracy": results["none"].get("accuracy"), "ssim": 1.0}, optional=("ssim", "accuracy"))
    plot(points, png, f"{title}: wall speed / fidelity", **common)
    pngs = [png]
    for axis in ("transformer", "work"):
        pngs.append(f"{os.path.splitext(args.output)[0]}-{axis}.png")
        plot([{**p, "speedup": speed(p, axis)} for p in points], pngs[-1], f"{title}: {AXES[axis]} / fidelity",
             xlabel=AXES[axis], **common)
    pngs.append(frontier_png(results, args.output, title))
    print(f"wrote {args.output}, {', '.join(pngs)}")
    return 0


def frontier_png(results: dict, output: str, title: str) -> str:
    """<output>-frontier.png: each framework's Pareto front of PSNR against counted-work and transformer speed-up."""
    from videosys.eval.frontier import pareto_plot

    rows = {v: r for v, r in results.items() if "error" not in r}
    axes = {axis: (AXES[axis], lambda row, axis=axis: speed(row, axis)) for axis in ("work", "transformer")}
    return pareto_plot(rows, f"{os.path.splitext(output)[0]}-frontier.png", f"{title}: each framework's best", axes)


def add_parser(sub) -> None:
    bench = sub.add_parser("bench", help="every registered cache (and optionally the peers') on one model: "
                                         "speed-up vs fidelity, JSON + PNG + table",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(bench)


def main(argv=None) -> int:
    """`videosys bench` as a function (scripts/bench_cache.py)."""
    parser = argparse.ArgumentParser(prog="videosys bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_args(parser.parse_args(argv))


def run_args(args) -> int:
    """run(args), a bad input said in one line (exit status 2) rather than a traceback."""
    return run_reporting_errors("videosys bench", run, args)
