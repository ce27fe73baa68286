"""`videosys tune`: the fastest cache setting that keeps a model's videos within a quality budget.

    videosys tune --model latte --preset demo --budget "lpips<=0.03"
    videosys tune --model latte --preset demo --budget "psnr>=35,lpips<=0.02" --prompts 12 --seeds 2
    videosys tune --model wan --model-path Wan-AI/Wan2.1-T2V-1.3B-Diffusers --device cuda \\
        --budget "lpips<=0.05" --prompt-file my_prompts.txt --steps 50
    videosys tune --model latte --preset demo --check tuned/latte-demo.json --budget "lpips<=0.03"   # a CI gate

The budget bounds the mean, over videos, of a metric against the same model's uncached video of the same
prompt and seed (PSNR / SSIM / LPIPS per frame, frames in [0, 1]: eval/teacache/common_metrics' protocol); several
bounds joined by commas must all hold. The prompts (--prompts of the set, spread over it) are split in two:
every other one is tuned on with seed 0, the rest confirm with seeds 1..--seeds, and both are reported.

Speed is counted work first: the floating-point operations of the transformer's matmuls and attention in a
generation (torch's FlopCounterMode), as a fraction of the uncached generation's on the same jobs. It is
exact and repeatable where wall time on a shared machine is not; the pick's wall speed-up is then measured in
interleaved rounds against no cache and reported beside it.

The search, in generations spent:
- the uncached references once per job (kept in the run folder: a rerun, or a run with another budget,
  reuses them and every candidate already scored);
- per registered method that has numbers for this model: its settings as one ladder from gentle to
  aggressive (a threshold or an interval; `LADDERS`), binary-searched for the most aggressive setting that
  meets the budget (assumes a gentler setting of one method is never worse, which is how each is built),
  then thresholds bisected --refine times between the last setting that held and the first that did not;
  methods without a ladder run their registered sweep;
- a candidate stops at the first video after which it cannot meet the budget any more (LPIPS >= 0,
  SSIM <= 1, PSNR <= 100 per video) or cannot do less work than the best candidate so far;
- pairs of the best methods at different hook points (`--no-pairs` leaves them out), each a step
  gentler than alone;
- the candidates that held on the tuning jobs, least work first, on the held-out jobs (--confirm of
  them): the first that holds there is the pick; if none does (a few tuning prompts can flatter a
  setting), the search runs again with the tuning budget tightened to half, then a quarter, of its
  distance from perfect (LPIPS and 1 - SSIM scaled, PSNR +3 / +6 dB), reusing every score.
Writes the pick as a cache spec file (`--output`, with the model, settings, budget, figures and date:
`--cache @tuned.json` in `videosys generate`), a table, a PNG of the frontier with the budget line, and the
run folder beside it (`<output>.run/`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import time

import numpy as np

from videosys.eval.runs import add_model_args, model_config, prompt_list, run_reporting_errors, spread_over
from videosys.utils.files import atomic_path, check_writable_folder, load_json, write_json

SENSES = {"lpips": "<=", "psnr": ">=", "ssim": ">="}  # the direction in which each metric is better
TIGHTEN = (1.0, 0.5, 0.25)  # the tuning budget's distance from perfect, scaled, while no pick holds out
PER_VIDEO_LIMIT = {"lpips": 0.0, "psnr": 100.0, "ssim": 1.0}  # best possible per video (metrics.PSNR_IDENTICAL)

# method -> its name patterns whose one number orders its settings from gentle to aggressive (a larger threshold
# or interval reuses more); a method not listed runs its registered sweep as it is
LADDERS = {
    "teacache": (("teacache-{}", float),), "magcache": (("magcache-{}", float),),
    "easycache": (("easycache-{}", float),), "fbcache": (("fbcache-{}", float),),
    "forecast": (("forecast-{}", float), ("forecast-i{}", int)),
    "taylorseer": (("taylorseer-{}", int),), "foca": (("foca-{}", int),), "skipcache": (("skipcache-{}", int),),
}


# ---------------------------------------------------------------- the budget


@dataclasses.dataclass(frozen=True)
class Bound:
    metric: str
    value: float

    @property
    def sense(self) -> str:
        return SENSES[self.metric]

    def holds(self, mean: float) -> bool:
        return mean <= self.value if self.sense == "<=" else mean >= self.value

    def reachable(self, values: list[float], total: int) -> bool:
        """Whether the mean over `total` videos can still hold after these `values`, the rest at their best."""
        best_rest = (total - len(values)) * PER_VIDEO_LIMIT[self.metric]
        return self.holds((sum(values) + best_rest) / total)

    def tightened(self, factor: float) -> "Bound":
        """The bound `factor` times as far from perfect: LPIPS and 1 - SSIM scaled, PSNR as the MSE would be."""
        if factor == 1.0:
            return self
        if self.metric == "psnr":
            return Bound("psnr", self.value - 10 * math.log10(factor))
        if self.metric == "ssim":
            return Bound("ssim", 1 - (1 - self.value) * factor)
        return Bound(self.metric, self.value * factor)

    def __str__(self) -> str:
        return f"{self.metric}{self.sense}{self.value:.4g}"


def parse_budget(text: str) -> list[Bound]:
    """"lpips<=0.03" or "psnr>=35,ssim>=0.95" -> bounds; the direction must be the metric's better one."""
    bounds = []
    for part in (p.strip() for p in str(text).split(",")):
        for sense in ("<=", ">="):
            metric, sep, value = part.partition(sense)
            if sep:
                break
        metric = metric.strip().lower()
        if not sep or metric not in SENSES:
            raise ValueError(f"--budget: {part!r} is not one of lpips<=X, psnr>=X, ssim>=X")
        if sense != SENSES[metric]:
            raise ValueError(f"--budget: {part!r} bounds {metric} the wrong way ({metric}{SENSES[metric]}X: "
                             f"{'lower' if SENSES[metric] == '<=' else 'higher'} is better)")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--budget: {value.strip()!r} in {part!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"--budget: {part!r} needs a finite number")
        bounds.append(Bound(metric, number))
    return bounds


# ---------------------------------------------------------------- scoring one candidate on jobs


class Scorer:
    """Generates with a cache spec on jobs and scores each video against its uncached reference, counting the
    transformer's work; references and scores are kept in `folder` (None: in memory) as they are made."""

    def __init__(self, engine, metrics: tuple[str, ...], lpips, folder: str | None):
        from videosys.eval.work import ForwardMeter

        self.engine, self.metrics, self.lpips, self.folder = engine, metrics, lpips, folder
        self.generations = 0
        self.meter = ForwardMeter(engine.pipeline.transformer, counting=True)
        self.scores: dict[tuple[str, str], dict] = {}
        self.references: dict[str, tuple[np.ndarray, int]] = {}
        if folder:
            os.makedirs(os.path.join(folder, "references"), exist_ok=True)
            path = os.path.join(folder, "scores.jsonl")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        if line.strip():  # a line cut by a crash has no newline and fails to parse: dropped
                            try:
                                row = json.loads(line)
                            except json.JSONDecodeError:
                                continue
                            self.scores[(row["spec"], row["job"])] = row

    def generate(self, spec: str, job: tuple[str, int]) -> tuple[np.ndarray, int]:
        from videosys.eval.bench import cache_spec

        self.engine.set_cache(cache_spec(spec))
        self.meter.reset()
        out = self.engine.generate(job[0], seed=job[1])
        self.generations += 1
        return out.video[0].numpy(), self.meter.flops

    def reference(self, job: tuple[str, int]) -> tuple[np.ndarray, int]:
        key = job_key(job)
        if key in self.references:
            return self.references[key]
        path = os.path.join(self.folder, "references", key + ".npz") if self.folder else None
        if path and os.path.exists(path):
            with np.load(path) as data:
                self.references[key] = (data["video"], int(data["flops"]))
            return self.references[key]
        video, flops = self.generate("none", job)
        if path:
            with atomic_path(path, ".npz") as tmp:
                np.savez(tmp, video=video, flops=flops)
        self.references[key] = (video, flops)
        return video, flops

    def score(self, spec: str, job: tuple[str, int]) -> dict:
        """{"flops", "ref_flops", metric: mean over frames} of this spec's video of this job."""
        from videosys.eval.metrics import video_metrics

        key = (spec, job_key(job))
        if key in self.scores:
            return self.scores[key]
        ref_video, ref_flops = self.reference(job)
        video, flops = self.generate(spec, job)
        values = video_metrics(ref_video, video, self.metrics, self.lpips)
        row = {"spec": spec, "job": key[1], "flops": flops, "ref_flops": ref_flops,
               **{name: float(np.mean(v)) for name, v in values.items()}}
        self.scores[key] = row
        if self.folder:  # one line per score, flushed: a crash loses at most the video being made
            with open(os.path.join(self.folder, "scores.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return row


def job_key(job: tuple[str, int]) -> str:
    """A file-name-safe key of (prompt, seed)."""
    return hashlib.sha1(job[0].encode("utf-8")).hexdigest()[:12] + f"-s{job[1]}"


@dataclasses.dataclass
class Result:
    """A spec scored on some jobs: whether it held (None: stopped early), its means and work fraction."""

    spec: str
    jobs: int
    held: bool | None
    means: dict
    work: float
    reason: str = ""

    def row(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(scorer: Scorer, spec: str, jobs: list, bounds: list[Bound], best_work: float | None = None) -> Result:
    """Score `spec` job by job; stop once a bound cannot hold any more, or once its work so far is not below
    `best_work` (it cannot beat the best candidate)."""
    rows = []
    for job in jobs:
        rows.append(scorer.score(spec, job))
        means = {b.metric: float(np.mean([r[b.metric] for r in rows])) for b in bounds}
        work = sum(r["flops"] for r in rows) / max(1, sum(r["ref_flops"] for r in rows))
        for bound in bounds:
            if not bound.reachable([r[bound.metric] for r in rows], len(jobs)):
                return Result(spec, len(rows), False, means, work, f"{bound} out of reach after {len(rows)} videos")
        if best_work is not None and work >= best_work and len(rows) < len(jobs):
            return Result(spec, len(rows), None, means, work, f"no less work than the best so far ({best_work:.3f})")
    held = all(b.holds(means[b.metric]) for b in bounds)
    return Result(spec, len(rows), held, means, work, "" if held else "budget missed")


# ---------------------------------------------------------------- the search


def ladders(config, only=None) -> list[tuple[str, str, type, list]]:
    """(method, pattern, type, values) for every applicable method, values gentle -> aggressive; a method with no
    ladder gives (method, name, None, [name]) per sweep name. Methods this model has no numbers for are left out."""
    from videosys.cache import METHODS
    from videosys.cache.registry import NeedsCalibration

    out = []
    for name, method in METHODS.items():
        if only and name not in only:
            continue
        usable = []
        for variant in method.sweep:
            try:
                config.resolve_cache(variant)
            except NeedsCalibration:
                continue
            except ValueError:  # e.g. Skip-Cache on a model without skip branches
                continue
            usable.append(variant)
        if not usable:
            continue
        if name not in LADDERS:
            out += [(name, variant, None, [variant]) for variant in usable]
            continue
        for pattern, kind in LADDERS[name]:
            values = sorted({v for v in (_value_of(variant, pattern, kind) for variant in usable) if v is not None})
            if kind is int and values:  # every interval from the gentlest registered one up to one past the last
                values = list(range(values[0], values[-1] + 2))
            if values:
                out.append((name, pattern, kind, values))
    return out


def _value_of(name: str, pattern: str, kind: type):
    head, tail = pattern.split("{}")
    if not (name.startswith(head) and name.endswith(tail)) or len(name) <= len(head) + len(tail):
        return None
    try:
        value = kind(name[len(head):len(name) - len(tail)])
    except ValueError:
        return None
    return value


def _name(pattern: str, value) -> str:
    return pattern.format(f"{value:.4g}" if isinstance(value, float) else value)


class Search:
    """The state of one tuning run: every result, the best candidate so far, the ladders' boundaries."""

    def __init__(self, scorer: Scorer, config, jobs: list, bounds: list[Bound], refine: int, progress):
        self.scorer, self.config, self.jobs, self.bounds = scorer, config, jobs, bounds
        self.refine, self.progress = refine, progress
        self.results: dict[str, Result] = {}
        self.best: Result | None = None
        self.gentler: dict[str, str] = {}  # method -> its setting a step gentler than its best (for pairs)
        self.best_of: dict[str, Result] = {}  # method -> its best setting that held

    def run(self, spec: str) -> Result:
        if spec in self.results:
            return self.results[spec]
        self.config.resolve_cache(spec)  # a spec this model cannot take fails here, not in the engine
        result = evaluate(self.scorer, spec, self.jobs, self.bounds, self.best.work if self.best else None)
        self.results[spec] = result
        if result.held and (self.best is None or result.work < self.best.work):
            self.best = result
        self.progress(result, self.best)
        return result

    def ladder(self, method: str, pattern: str, kind, values: list) -> None:
        """Binary search for the last value that holds (a stopped candidate counts as holding: only a more
        aggressive one can beat the best), then, for a threshold, bisection towards the first that does not."""
        values = list(values)
        lo, hi, grown = -1, len(values), 0
        while True:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self.run(_name(pattern, values[mid])).held is False:
                    hi = mid
                else:
                    lo = mid
            if kind is float and lo == len(values) - 1 and grown < 2:  # every threshold held: try larger ones
                values.append(values[-1] * 2)
                hi, grown = len(values), grown + 1
                continue
            break
        if kind is float and 0 <= lo and hi < len(values):
            low, high = values[lo], values[hi]
            for _ in range(self.refine):
                mid = float(f"{(low + high) / 2:.3g}")
                if mid in (low, high):
                    break
                if self.run(_name(pattern, mid)).held is False:
                    high = mid
                else:
                    low = mid
        held = [r for r in self.results.values() if r.held and _value_of(r.spec, pattern, kind) is not None]
        if held:
            best = min(held, key=lambda r: r.work)
            if method not in self.best_of or best.work < self.best_of[method].work:
                self.best_of[method] = best
                gentle = [r for r in held if r.work > best.work]
                self.gentler[method] = min(gentle, key=lambda r: r.work).spec if gentle else best.spec

    def single(self, method: str, name: str) -> None:
        result = self.run(name)
        if result.held and (method not in self.best_of or result.work < self.best_of[method].work):
            self.best_of[method] = result
            self.gentler[method] = result.spec

    def pairs(self, top: int = 4) -> None:
        """The best `top` methods two at a time where they may combine, each pair three ways: one or both of them
        a step gentler than alone (errors add up, so both at their limit rarely holds)."""
        from videosys.cache.registry import configs_from_spec

        ranked = sorted(self.best_of, key=lambda m: self.best_of[m].work)[:top]
        for i, a in enumerate(ranked):
            for b in ranked[i + 1:]:
                options = [(self.best_of[a].spec, self.gentler[b]), (self.gentler[a], self.best_of[b].spec),
                           (self.gentler[a], self.gentler[b])]
                for left, right in dict.fromkeys(options):
                    spec = f"{left}+{right}"
                    try:
                        configs_from_spec(spec, self.config.published_cache_settings())
                    except ValueError:  # two methods at one hook point (check_combination): not a pair
                        break
                    self.run(spec)


def confirm(scorer: Scorer, results: list[Result], jobs: list, bounds: list[Bound], limit: int):
    """The first of `results` (least work first) that also holds on the held-out jobs, and what each scored."""
    checked = []
    for result in sorted(results, key=lambda r: r.work)[:limit]:
        held_out = evaluate(scorer, result.spec, jobs, bounds)
        checked.append((result, held_out))
        if held_out.held:
            return result, held_out, checked
    return None, None, checked


# ---------------------------------------------------------------- the command


def add_arguments(parser) -> None:
    add_model_args(parser)
    parser.set_defaults(prompts=8)
    parser.add_argument("--budget", required=True,
                        help='quality against the uncached videos, e.g. "lpips<=0.03", "psnr>=35", "ssim>=0.95"; '
                             "several: comma-separated, all must hold")
    parser.add_argument("--check", metavar="SPEC",
                        help="only check a cache spec (a name, a+b, or @tuned.json) against the budget on every "
                             "prompt: exit status 1 if it misses (a CI gate)")
    parser.add_argument("--refine", type=int, default=2, help="bisections of a threshold between held and missed")
    parser.add_argument("--confirm", type=int, default=3, help="candidates tried on the held-out prompts")
    parser.add_argument("--no-pairs", action="store_true", help="single methods only")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="search only these registered methods")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds of the pick vs no cache")
    parser.add_argument("--output", help="the tuned spec JSON (default: tuned/<model>-<preset or checkpoint>.json); "
                                         "the PNG and the run folder <output>.run/ go beside it")
    parser.add_argument("--run-dir", help="the references and scores, kept for reruns (default: <output>.run/); "
                                          "runs with other budgets can share it")
    parser.add_argument("--overwrite", action="store_true", help="start the run folder over")


def split_jobs(prompts: list[str], count: int, seeds: int) -> tuple[list, list]:
    """`count` prompts spread over the set; every other one tunes (seed 0), the rest confirm (seeds 1..seeds)."""
    if count < 2:
        raise ValueError(f"--prompts must be >= 2 (some to tune on, some to confirm on), got {count}")
    if count > len(prompts):
        raise ValueError(f"--prompts {count}: the prompt set has {len(prompts)}")
    chosen = spread_over(prompts, count)
    tune = [(p, 0) for p in chosen[0::2]]
    held_out = [(p, s) for p in chosen[1::2] for s in range(1, 1 + seeds)]
    return tune, held_out


def run_settings(args, config) -> dict:
    """What defines the videos of a run folder: a rerun with other settings starts a new folder or is refused."""
    return {"model": args.model, "preset": args.preset, "model_path": args.model_path,
            "steps": config.num_inference_steps, "num_frames": config.num_frames, "height": config.height,
            "width": config.width, "dtype": str(config.dtype), "device": str(config.torch_device()),
            "guidance_scale": getattr(config, "guidance_scale", None)}


def open_run_folder(folder: str, settings: dict, overwrite: bool) -> None:
    import shutil

    path = os.path.join(folder, "settings.json")
    if overwrite and os.path.isdir(folder):
        shutil.rmtree(folder)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in settings.items() if old.get(k) != v]
        if diff:
            raise ValueError(f"{folder} holds a tuning run with other settings ({'; '.join(diff)}): "
                             "pass --overwrite to start it over, or another --output")
    write_json(path, settings)


def _check(args, config, bounds, jobs, scorer) -> int:
    spec = tuned_spec(args.check) if args.check.startswith("@") else args.check
    config.resolve_cache(spec)
    result = evaluate(scorer, spec, jobs, bounds)
    verdict = "holds" if result.held else "MISSES"
    print(f"{spec} on {len(jobs)} videos: " + ", ".join(f"{m} {v:.4f}" for m, v in result.means.items())
          + f", work {result.work:.3f} of uncached: {verdict} {', '.join(map(str, bounds))}")
    return 0 if result.held else 1


def run(args) -> int:
    bounds = parse_budget(args.budget)
    for name, value in (("--refine", args.refine), ("--confirm", args.confirm), ("--repeats", args.repeats),
                        ("--seeds", args.seeds)):
        if value < (0 if name in ("--refine", "--repeats") else 1):
            raise ValueError(f"{name} must be >= {0 if name in ('--refine', '--repeats') else 1}, got {value}")
    from videosys.cache import METHODS

    unknown = sorted(set(args.methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: {', '.join(unknown)} not registered; choose from {', '.join(METHODS)}")
    config = model_config(args)
    count = args.prompts
    prompts = prompt_list(argparse.Namespace(**{**vars(args), "prompts": None}))
    tune_jobs, held_jobs = split_jobs(prompts, count, args.seeds)
    metrics = tuple(dict.fromkeys(["psnr", "ssim"] + [b.metric for b in bounds]))
    lpips = None
    if "lpips" in metrics:
        from videosys.eval.lpips import load_lpips

        lpips = load_lpips(device=config.torch_device())  # before any weight of the model loads: names the fetch
    if args.check:
        if args.check.startswith("@"):
            tuned_spec(args.check)  # a bad file is said before the model loads
        folder = None
    else:
        name = os.path.basename(os.path.normpath(args.model_path)) if args.model_path else args.preset
        output = args.output or os.path.join("tuned", f"{args.model}-{name}.json")
        folder = args.run_dir or os.path.splitext(output)[0] + ".run"
        check_writable_folder(os.path.dirname(output) or ".", "--output", output)  # before any weight loads
        check_writable_folder(folder, "--run-dir")
        open_run_folder(folder, {**run_settings(args, config), "prompts": [p for p, _ in tune_jobs + held_jobs],
                                 "seeds": args.seeds}, args.overwrite)

    from videosys import VideoSysEngine

    with VideoSysEngine(config) as engine:
        scorer = Scorer(engine, metrics, lpips, folder)
        if args.check:
            return _check(args, config, bounds, tune_jobs + held_jobs, scorer)
        started = time.perf_counter()
        from tqdm.auto import tqdm

        for job in tqdm(tune_jobs + held_jobs, desc="uncached references", unit="video"):
            scorer.reference(job)
        progress, checked, pick, held_out, scored = _progress(scorer), [], None, None, {}
        for factor in TIGHTEN:  # a pick that misses on the held-out jobs: search again with a tighter tuning budget
            tuning_bounds = [b.tightened(factor) for b in bounds]
            search = Search(scorer, config, tune_jobs, tuning_bounds, args.refine, progress)
            for method, pattern, kind, values in ladders(config, args.methods):
                if kind is None:
                    search.single(method, pattern)
                else:
                    search.ladder(method, pattern, kind, values)
            if not args.no_pairs:
                search.pairs()
            tried = {r.spec for r, _ in checked}
            held = [r for r in search.results.values() if r.held and r.spec not in tried]
            pick, held_out, now = confirm(scorer, held, held_jobs, bounds, args.confirm)
            checked += now
            scored.update(search.results)
            if pick is not None:
                break
        wall = _wall_speedup(engine, scorer, pick.spec, held_jobs, args.repeats) if pick and args.repeats else None
    report = _report(args, config, bounds, search, scored, pick, held_out, checked, wall, scorer, tune_jobs, held_jobs,
                     time.perf_counter() - started)
    write_json(output, report)
    png = _plot(scored, len(tune_jobs), pick, bounds[0], search.bounds[0], os.path.splitext(output)[0] + ".png",
                f"{args.model} ({name})")
    print(_table(scored, checked))
    if search.bounds != bounds:
        print(f"(no candidate of the budget held out: the table is the search with the tuning budget tightened to "
              f"{', '.join(map(str, search.bounds))})")
    if pick is None:
        print(f"no setting held {', '.join(map(str, bounds))} on both the tuning and the held-out prompts: "
              f"the pick is no cache ({output})")
    else:
        print(f"pick: {pick.spec}  work {pick.work:.3f} of uncached ({1 / pick.work:.2f}x fewer FLOPs), tuned: "
              + _means(pick.means) + f"; held out: {_means(held_out.means)}"
              + (f"; wall {wall['speedup']:.2f}x" if wall else ""))
        print(f"use it: videosys generate --model {args.model} ... --cache @{output}")
    print(f"{scorer.generations} generations scored; wrote {output}, {png} and {folder}/")
    return 0


def _means(means: dict) -> str:
    return ", ".join(f"{m} {v:.4f}" for m, v in means.items())


def _progress(scorer):
    from tqdm.auto import tqdm

    bar = tqdm(desc="tune", unit="candidate")

    def show(result: Result, best: Result | None):
        bar.update(1)
        bar.set_postfix_str(f"{result.spec}: {'held' if result.held else 'missed' if result.held is False else 'stopped'}"
                            f"; best {best.spec if best else '-'}; {scorer.generations} generations")
    return show


def _wall_speedup(engine, scorer, spec: str, jobs: list, repeats: int) -> dict:
    """Median seconds per video of no cache and the pick, in interleaved rounds on the held-out jobs."""
    from videosys.eval.bench import EngineRunner, time_rounds

    scorer.meter.counting = False
    runner = EngineRunner(engine)
    times = time_rounds([("none", runner, "none"), (spec, runner, spec)], jobs, repeats)
    scorer.meter.counting = True
    return {"speedup": times["none"]["total_s"] / times[spec]["total_s"], "repeats": repeats, **{
        f"{name}_s": value["total_s"] for name, value in (("none", times["none"]), ("pick", times[spec]))}}


def _report(args, config, bounds, search, scored, pick, held_out, checked, wall, scorer, tune_jobs, held_jobs, seconds):
    return {
        "cache": pick.spec if pick else "none",
        "model": args.model, "preset": args.preset, "model_path": args.model_path,
        "settings": run_settings(args, config), "budget": ",".join(map(str, bounds)),
        "tuning_budget": ",".join(map(str, search.bounds)),
        "tune": {"jobs": [list(j) for j in tune_jobs], **({"means": pick.means, "work": pick.work} if pick else {})},
        "held_out": {"jobs": [list(j) for j in held_jobs],
                     **({"means": held_out.means, "work": held_out.work} if held_out else {})},
        "wall": wall, "generations": scorer.generations, "seconds": seconds,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "candidates": [r.row() for r in scored.values()],
        "confirmed": [{"spec": r.spec, "held_out": h.row()} for r, h in checked],
    }


def _table(scored: dict, checked) -> str:
    held_out = {r.spec: h for r, h in checked}
    metrics = list(next(iter(scored.values())).means) if scored else []
    lines = [f"{'candidate':<34}{'work':>7}" + "".join(f"{m:>9}" for m in metrics) + f"{'videos':>8}  tuned / held out"]
    for r in sorted(scored.values(), key=lambda r: r.work):
        status = "held" if r.held else "missed" if r.held is False else "stopped"
        if r.spec in held_out:
            status += " / " + ("held" if held_out[r.spec].held else "missed")
        lines.append(f"{r.spec:<34}{r.work:>7.3f}" + "".join(f"{r.means.get(m, float('nan')):>9.4f}" for m in metrics)
                     + f"{r.jobs:>8}  {status}")
    return "\n".join(lines)


def _plot(scored: dict, jobs: int, pick: Result | None, bound: Bound, tuning: Bound, output: str, title: str) -> str:
    """The metric of the budget's first bound against counted speed-up, a line per method, over every candidate
    scored on all tuning jobs; the budget (and the tightened tuning budget, if one gave the pick) and the pick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from videosys.eval.bench import method_of

    fig, ax = plt.subplots(figsize=(6, 4))
    points = [r for r in scored.values() if r.jobs == jobs and bound.metric in r.means]
    for method in sorted({method_of(r.spec) for r in points}):
        mine = sorted((r for r in points if method_of(r.spec) == method), key=lambda r: r.work)
        ax.plot([1 / r.work for r in mine], [r.means[bound.metric] for r in mine], marker="o", alpha=0.7, label=method)
    ax.axhline(bound.value, color="black", ls="--", lw=1, label=f"budget {bound}")
    if tuning != bound:
        ax.axhline(tuning.value, color="grey", ls=":", lw=1, label=f"tuning budget {tuning}")
    if pick is not None:
        ax.scatter([1 / pick.work], [pick.means[bound.metric]], marker="*", s=260, facecolors="none", edgecolors="red", zorder=5,
                   label=f"pick {pick.spec}")
    ax.set_xlabel("uncached FLOPs / cached FLOPs (counted work)")
    ax.set_ylabel(f"{bound.metric} vs uncached (tuning prompts)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(output, ".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return output


def tuned_spec(reference: str):
    """The cache spec in a `videosys tune` file ("@tuned.json" or "tuned.json"), its "cache" entry; a file that is
    missing or is not one is named in the error."""
    path = reference[1:] if reference.startswith("@") else reference
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tuned cache file at {path!r} (`videosys tune` writes one)")
    data = load_json(path, "tuned cache file")
    spec = data.get("cache") if isinstance(data, dict) else None
    if not isinstance(spec, (str, list, dict)):
        raise ValueError(f"{path}: no \"cache\" entry (a `videosys tune` file has the pick there)")
    return spec


def add_parser(sub) -> None:
    tune = sub.add_parser("tune", help="the fastest cache setting that meets a quality budget (vs uncached)",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(tune)


def run_args(args) -> int:
    """run(args), a bad input said in one line (exit status 2) rather than a traceback."""
    return run_reporting_errors("videosys tune", run, args)
