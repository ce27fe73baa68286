"""Batch generation over the VBench prompts, shared by every family's script.

A family's script (latte.py, opensora.py, ...) names the family and its variant table and
calls `main(family)`. Each variant is a dict of config overrides on top of the command
line's config; `baseline` is the model as published, with no cache (from eval/teacache, as every
eval command):

    python experiments/latte.py --preset tiny --num-prompts 4                  # baseline
    python experiments/latte.py --variant teacache-slow --num-seeds 5          # full protocol

Files: `<output-dir>/<variant>/{prompt}-{seed}.mp4` (docs/evaluation.md), plus
`stats.json` there: per-video timing and cache statistics, for the speed / quality plot.
A run is resumable: a finished file is skipped; save_video writes a temporary file and
renames it, so a killed run never leaves a half-written `{prompt}-{seed}.mp4`. Because a
skipped file counts as done, a folder's `settings.json` records the settings that define its
videos, and a run with other settings refuses to resume there (`--overwrite` starts over).

With `--ray-workers N` (a local Ray) or `--ray-address` (a cluster whose nodes share the
output folder), the jobs are spread over Ray actors, each owning one engine; a video
depends only on (config, prompt, seed), so the files match a single-process run.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from videosys.cache import published_names

NUM_SEEDS = 5  # seeds 0..4 per prompt (docs/evaluation.md)
STATS_FILE = "stats.json"
SETTINGS_FILE = "settings.json"
METRICS_FILE = "metrics.json"  # common_metrics/eval.py's, in the scored folder
# config fields that change how a video is computed, not what it is: a run may resume another's folder with
# other values of these (more GPUs, another device, a compiled transformer)
_NOT_SETTINGS = {"progress_bar", "num_gpus", "cfg_parallel", "heartbeat_timeout", "compile", "device"}


# The papers' variants, as config overrides: every registered method's published operating points
# (videosys/cache: "teacache-slow", "teacache-fast", "pab", ...), each family's defaults from its config
CACHE_VARIANTS = {"baseline": {}, **{name: {"cache": name} for name in published_names()}}


@dataclass
class Family:
    """One model family's batch-generation settings: its registry name and its variants."""

    name: str  # as in videosys.models.FAMILIES: "latte", "open-sora", ...
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(CACHE_VARIANTS))  # "baseline" -> {}
    defaults: dict[str, Any] = field(default_factory=dict)  # config fields every variant shares


@dataclass(frozen=True)
class Job:
    prompt: str
    seed: int
    path: str


# ---------------------------------------------------------------- prompts


def vbench_info_path() -> str:
    """VBench_full_info.json inside the installed `vbench` package, found without importing vbench
    (its import pulls the scorer's pinned dependencies)."""
    try:
        spec = importlib.util.find_spec("vbench")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = os.path.join(folder, "VBench_full_info.json")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        "the VBench prompt list comes from the `vbench` package's VBench_full_info.json, and `vbench` is not "
        "installed here; install it without its pinned dependencies: pip install --no-deps vbench==0.1.5 "
        "(or give your own prompts with --prompts-file)")


def load_prompts(prompts_file: str | None = None) -> list[str]:
    """The prompts, in order: VBench's `prompt_en` list, or a file of one prompt per line
    (.txt) or a JSON list of strings / of {"prompt_en": ...} records."""
    from videosys.utils.files import load_json, read_text

    path = prompts_file or vbench_info_path()
    if path.endswith(".json"):  # a file that is not UTF-8 or not JSON: an error naming the file and line
        data = load_json(path, "prompts file")
        if not isinstance(data, list):
            raise ValueError(f"{path}: a JSON prompts file is a list of strings or of {{\"prompt_en\": ...}} records")
        prompts = [item.get("prompt_en") if isinstance(item, dict) else item for item in data]
    else:
        prompts = [line.strip() for line in read_text(path, "prompts file").splitlines() if line.strip()]
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt or "/" in prompt or "\0" in prompt:
            raise ValueError(f"{path}: prompt {prompt!r} cannot be a file name")
    return prompts


def video_name(prompt: str, seed: int) -> str:
    return f"{prompt}-{seed}.mp4"


def make_jobs(prompts: list[str], seeds: list[int], folder: str) -> list[Job]:
    """One job per (prompt, seed), prompt-major; a prompt listed twice (VBench lists two prompts
    under two dimensions each) names the same file, so it is generated once."""
    jobs, seen = [], set()
    for prompt in prompts:
        for seed in seeds:
            name = video_name(prompt, seed)
            if name not in seen:
                seen.add(name)
                jobs.append(Job(prompt, seed, os.path.join(folder, name)))
    return jobs


def pending(jobs: list[Job]) -> list[Job]:
    """The jobs whose file is not there yet (every file there is complete: it was renamed into place)."""
    return [job for job in jobs if not os.path.exists(job.path)]


def remove_stale_temporaries(folder: str) -> list[str]:
    """A run killed while writing leaves a hidden temporary file (save_video's, or stats.json's); the
    rerun removes it. One run per folder at a time: a second run's files in progress would go too."""
    stale = [path for pattern in (".tmp-*.mp4", ".tmp-*.json")
             for path in glob.glob(os.path.join(glob.escape(folder), pattern))]
    for path in stale:
        os.remove(path)
    return stale


# ---------------------------------------------------------------- config


def build_config(family: Family, variant: str, options: dict[str, Any]):
    """The family's config for one variant: family defaults < command-line options < variant overrides."""
    from videosys.models import FAMILIES, available, config_class

    if family.name not in available():
        known = ", ".join(available()) or "none"
        raise SystemExit(f"model family {family.name!r} is not in this videosys install yet "
                         f"(registered in videosys/models/__init__.py: {sorted(FAMILIES)}; present: {known})")
    if variant not in family.variants:
        raise SystemExit(f"unknown variant {variant!r} for {family.name}; choose from {sorted(family.variants)}")
    cls = config_class(family.name)
    overrides = family.variants[variant]
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(set(overrides) - fields)
    if missing:
        raise SystemExit(f"variant {variant!r} sets {', '.join(missing)}, which {cls.__name__} does not have in this "
                         "install: that cache method is not implemented for this family yet")
    values = {**family.defaults, **{k: v for k, v in options.items() if v is not None}, **overrides}
    values["progress_bar"] = False  # one bar for the batch, not one per video
    return cls.from_dict(values)


# ---------------------------------------------------------------- one folder, one set of settings


def video_settings(family: Family, variant: str, config, negative_prompt: str | None) -> dict[str, Any]:
    """What defines a folder's videos: the family, the variant and the config's values (checkpoint or preset,
    steps, size, frames, dtype, the variant's cache), and the negative prompt (None: the family's default)."""
    return _settings(family.name, variant, config.to_dict(), negative_prompt)


def _settings(family: str, variant: str, config: dict[str, Any], negative_prompt: str | None) -> dict[str, Any]:
    values = {k: v for k, v in _json_value(config).items() if k not in _NOT_SETTINGS}
    return {"family": family, "variant": variant, **values, "negative_prompt": negative_prompt}


def settings_from_stats(folder: str, videos: list[str], settings: dict[str, Any]) -> tuple[dict | None, str]:
    """The settings of a folder written before settings.json existed, read from its stats.json: (settings, "")
    when every video there is listed and every run that made one had this run's settings; else (None, why).
    Those runs did not record a negative prompt: a folder is adopted only by a run with the family's default."""
    path = os.path.join(folder, STATS_FILE)
    if not os.path.exists(path):
        return None, f"no {STATS_FILE} either"
    from videosys.utils.files import load_json

    data = load_json(path, STATS_FILE)
    runs = data.get("runs", [data["meta"]] if "meta" in data else [])
    listed = data.get("videos", {})
    unlisted = sorted(set(videos) - set(listed))
    if unlisted or not runs:
        return None, f"{STATS_FILE} does not list {len(unlisted) or len(videos)} of them"
    if settings.get("negative_prompt") is not None:
        return None, f"{STATS_FILE} does not record the negative prompt, and this run gives one"
    for run in runs:
        recorded = _settings(run.get("family"), run.get("variant"), run.get("config", {}), None)
        if recorded != settings:
            differ = [f"{k}: {recorded.get(k)!r} there, {settings.get(k)!r} now"
                      for k in sorted(set(recorded) | set(settings)) if recorded.get(k) != settings.get(k)]
            return None, f"its {STATS_FILE} records other settings ({'; '.join(differ)})"
    return settings, ""


def claim_folder(folder: str, settings: dict[str, Any], overwrite: bool) -> None:
    """Make `folder` this run's: a new folder, or one whose settings.json matches, is resumed; one holding
    videos of other settings (or of unknown ones: videos and no settings.json) is refused, naming each
    difference, since resuming would count those videos as this run's. `overwrite` deletes the folder's
    videos and stats first (nothing else of the folder's)."""
    path = os.path.join(folder, SETTINGS_FILE)
    videos = [n for n in os.listdir(folder) if n.endswith(".mp4") and not n.startswith(".")]
    recorded = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    if not overwrite and recorded is not None and recorded != settings:
        differ = [f"{k}: {recorded.get(k)!r} there, {settings.get(k)!r} now"
                  for k in sorted(set(recorded) | set(settings)) if recorded.get(k) != settings.get(k)]
        raise SystemExit(f"{folder} holds videos generated with other settings ({'; '.join(differ)}): give another "
                         "--output-dir, or --overwrite to delete its videos and start over")
    if not overwrite and recorded is None and videos:  # a folder from before settings.json: adopt it if stats agree
        recorded, why = settings_from_stats(folder, videos, settings)
        if recorded is None:
            raise SystemExit(f"{folder} holds {len(videos)} videos but no {SETTINGS_FILE}, and {why}, so their "
                             "settings are unknown: give another --output-dir, or --overwrite to delete its videos "
                             "and start over")
        print(f"{folder}: no {SETTINGS_FILE}; its {STATS_FILE} shows these settings made every video there: "
              f"adopted (writing {SETTINGS_FILE})", flush=True)
        recorded = None  # written below
    if overwrite:
        for name in videos + [STATS_FILE, METRICS_FILE]:  # the metrics scored the videos deleted here
            if os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
        remove_metrics_against(folder)
    if recorded != settings or overwrite:
        from videosys.utils.files import write_json

        write_json(path, settings, indent=1)


def remove_metrics_against(folder: str) -> None:
    """The other variants' metrics.json scored against `folder`'s videos as their baseline (common_metrics/eval.py
    records its --gt_video_dir): once those videos are deleted they describe videos that no longer exist."""
    target = os.path.abspath(folder)
    for path in glob.glob(os.path.join(glob.escape(os.path.dirname(target)), "*", METRICS_FILE)):
        try:
            with open(path, encoding="utf-8") as f:
                against = json.load(f).get("gt_video_dir")
        except (OSError, ValueError, AttributeError):
            continue
        if against == target:
            os.remove(path)
            print(f"removed {path}: it scored videos against {folder}, whose videos --overwrite deleted", flush=True)


# ---------------------------------------------------------------- generation


def _json_value(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value if isinstance(value, (int, str, bool, type(None))) else str(value)


class Generator:
    """Owns one engine; generates a job and writes its file. A Ray actor wraps the same class."""

    def __init__(self, config_cls_name: str, config: dict[str, Any], threads: int | None = None):
        import torch

        if not threads and _ray_actor_cpus():  # an actor otherwise keeps the driver's count, on a share of the cores
            threads = _ray_actor_cpus()
        if threads:
            torch.set_num_threads(threads)
        from videosys.core.engine import VideoSysEngine
        from videosys.models import config_class

        self.engine = VideoSysEngine(config_class(config_cls_name).from_dict(config))
        self.generated = 0

    def run(self, job: Job, negative_prompt: str | None = None) -> dict[str, Any]:
        if os.path.exists(job.path):  # another worker or run finished it
            return {"skipped": True}
        start = time.perf_counter()
        extra = {} if negative_prompt is None else {"negative_prompt": negative_prompt}  # None: the family's default
        out = self.engine.generate(job.prompt, seed=job.seed, **extra)
        self.engine.save_video(out.video[0], job.path)
        stats = {k: _json_value(v) for k, v in (out.stats or {}).items()}
        stats["wall_s"] = round(time.perf_counter() - start, 6)
        stats["threads"] = torch_threads()  # timings on a CPU depend on it
        stats["first_of_engine"] = self.generated == 0  # pays the warm-up; plot_frontier leaves these out
        self.generated += 1
        return stats

    def shutdown(self) -> None:
        self.engine.shutdown()


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _ray_actor_cpus() -> int | None:
    """The CPUs Ray gave this actor, inside a Ray actor; else None."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        context = ray.get_runtime_context()
        if context.get_actor_id() is None:
            return None
        return max(1, int(context.get_assigned_resources().get("CPU", 1)))
    except Exception:  # not in a worker process of a Ray job
        return None


class StatsFile:
    """`stats.json` beside the videos: one entry per run that generated there (`runs`: its config and device)
    and per-video stats (`run`: the index of the run that made it), rewritten atomically after each video.
    A resumed run appends its entry: the timings of a folder resumed on another device stay told apart.

    Opened on a folder a killed run left, it is rebuilt from the videos on disk: a video saved just before the
    kill (its stats never written) gets an entry marked "recovered" (no timings), and an entry whose video is
    gone is dropped, so the file always lists exactly the videos there.
    """

    def __init__(self, folder: str, meta: dict[str, Any]):
        self.path = os.path.join(folder, STATS_FILE)
        data = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        on_disk = {name for name in os.listdir(folder) if name.endswith(".mp4") and not name.startswith(".")}
        videos = {name: stats for name, stats in data.get("videos", {}).items() if name in on_disk}
        for name in sorted(on_disk - set(videos)):
            videos[name] = {"recovered": True}  # saved, then killed before its stats were: timings lost
        self.changed = videos != data.get("videos", {})
        runs = data.get("runs", [data["meta"]] if "meta" in data else [])  # "meta": one run, as files once were
        self.data = {"runs": runs, "videos": videos}
        self.meta, self.run = meta, None

    def add(self, name: str, stats: dict[str, Any]) -> None:
        if self.run is None:  # this run's entry, once it has generated something
            self.data["runs"].append(self.meta)
            self.run = len(self.data["runs"]) - 1
        self.data["videos"][name] = {**stats, "run": self.run}
        self.write()

    def write(self) -> None:
        from videosys.utils.files import write_json

        write_json(self.path, self.data, indent=1)


def run_local(config, jobs: list[Job], on_done, threads: int | None = None, negative_prompt: str | None = None) -> None:
    generator = Generator(config.model_name, config.to_dict(), threads)
    try:
        for job in jobs:
            on_done(job, generator.run(job, negative_prompt))
    finally:
        generator.shutdown()


def run_ray(config, jobs: list[Job], on_done, workers: int | None, address: str | None,
            threads: int | None = None, negative_prompt: str | None = None) -> None:
    """Spread the jobs over Ray actors (one engine each), one job in flight per actor."""
    try:
        import ray
    except ImportError:
        raise SystemExit("--ray-workers / --ray-address need Ray: pip install 'ray>=2.9'") from None

    import videosys

    # the actors import videosys as this process does, and this module by value (it is not a package)
    source_root = os.path.dirname(os.path.dirname(os.path.abspath(videosys.__file__)))
    python_path = os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH")) if p)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started_here = not ray.is_initialized()
    if started_here:
        runtime_env = {"env_vars": {"PYTHONPATH": python_path}}
        if address:  # a cluster: its nodes need videosys (installed, or this tree on a shared filesystem)
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or 1, runtime_env=runtime_env, log_to_driver=False, include_dashboard=False)
    try:
        use_gpus = ray.cluster_resources().get("GPU", 0) > 0
        per_actor = dict(num_gpus=config.num_gpus) if use_gpus else dict(num_cpus=1)
        if not workers:
            total = ray.cluster_resources().get("GPU" if use_gpus else "CPU", 1)
            workers = max(1, int(total // (config.num_gpus if use_gpus else 1)))
        workers = max(1, min(workers, len(jobs)))
        if threads is None and not address:  # local actors share this machine's cores (a cluster's get theirs)
            from videosys.core.config import available_cores

            threads = max(1, available_cores() // workers)
        actor_cls = ray.remote(**per_actor)(Generator)
        actors = [actor_cls.remote(config.model_name, config.to_dict(), threads) for _ in range(workers)]
        queue, in_flight = list(jobs), {}
        for actor in actors:
            if queue:
                job = queue.pop(0)
                in_flight[actor.run.remote(job, negative_prompt)] = (actor, job)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            actor, job = in_flight.pop(done[0])
            on_done(job, ray.get(done[0]))
            if queue:
                nxt = queue.pop(0)
                in_flight[actor.run.remote(nxt, negative_prompt)] = (actor, nxt)
        for actor in actors:
            ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()


def run_environment(args) -> dict[str, Any]:
    """Where the timings come from: compare speed-ups only between runs on the same kind of device."""
    import platform

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"host": platform.node(), "device": device, "torch": torch.__version__,
            "ray": bool(args.ray_workers or args.ray_address)}


def generate_variant(family: Family, variant: str, args) -> dict[str, Any]:
    """Generate every missing video of one variant; returns a summary."""
    from tqdm import tqdm

    config = build_config(family, variant, config_options(args))
    prompts = load_prompts(args.prompts_file)
    stop = None if args.num_prompts is None else args.start + args.num_prompts
    prompts = prompts[args.start:stop]
    seeds = list(range(args.num_seeds))
    folder = os.path.join(args.output_dir, variant)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    claim_folder(folder, video_settings(family, variant, config, args.negative_prompt), args.overwrite)
    jobs = make_jobs(prompts, seeds, folder)
    todo = pending(jobs)
    print(f"{family.name} / {variant}: {len(jobs)} videos, {len(jobs) - len(todo)} already there, "
          f"{len(todo)} to generate -> {folder}", flush=True)
    summary = {"variant": variant, "folder": folder, "videos": len(jobs), "generated": 0}
    stats_file = StatsFile(folder, {"family": family.name, "variant": variant, "config": config.to_dict(),
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **run_environment(args)})
    if not todo:
        if stats_file.changed:  # a run killed after its last video: stats.json catches up with the folder
            stats_file.write()
        return summary
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"{family.name}/{variant}", unit="video")

    def on_done(job: Job, stats: dict[str, Any]) -> None:
        if not stats.get("skipped"):
            stats_file.add(os.path.basename(job.path), stats)
            summary["generated"] += 1
        bar.update()

    try:
        if args.ray_workers or args.ray_address:
            run_ray(config, todo, on_done, args.ray_workers, args.ray_address, args.threads, args.negative_prompt)
        else:
            run_local(config, todo, on_done, args.threads, args.negative_prompt)
    finally:
        bar.close()
    return summary


# ---------------------------------------------------------------- command line

_GENERATION = {"num_frames": int, "height": int, "width": int, "num_inference_steps": int,
               "guidance_scale": float, "fps": int}


def build_parser(family: Family) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"Generate the VBench prompt set with {family.name}, one folder per variant.")
    p.add_argument("--variant", nargs="+", default=["baseline"], choices=sorted(family.variants),
                   help="variants to generate, in order (default: baseline)")
    p.add_argument("--output-dir", help="videos go to <output-dir>/<variant>/{prompt}-{seed}.mp4 (default: "
                   f"samples/{family.name}, or samples/{family.name}-<preset> with --preset)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the videos and stats of a folder generated with other settings and start over")
    p.add_argument("--prompts-file", help="prompts instead of VBench's (.txt one per line, or a JSON list)")
    p.add_argument("--start", type=int, default=0, help="index of the first prompt")
    p.add_argument("--num-prompts", type=int, help="how many prompts from --start (default: all)")
    p.add_argument("--num-seeds", type=int, default=NUM_SEEDS, help="seeds 0..N-1 per prompt (default 5)")
    p.add_argument("--negative-prompt", default=None, help="default: the family's published one")
    p.add_argument("--preset", help="e.g. tiny: a small random-weight model that runs offline")
    p.add_argument("--model-path", help="hub id or local folder of the checkpoint")
    p.add_argument("--num-gpus", type=int, help="processes per engine (sequence / CFG parallel)")
    p.add_argument("--dtype")
    p.add_argument("--device")
    for name, kind in _GENERATION.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind)
    p.add_argument("--steps", dest="num_inference_steps", type=int, help="alias of --num-inference-steps")
    p.add_argument("--threads", type=int, help="torch CPU threads per engine")
    p.add_argument("--ray-workers", type=int, help="spread the videos over N Ray actors (a local Ray unless --ray-address)")
    p.add_argument("--ray-address", help="address of a running Ray cluster, e.g. auto or ray://head:10001")
    return p


def config_options(args) -> dict[str, Any]:
    return {"preset": args.preset, "model_path": args.model_path, "num_gpus": args.num_gpus, "dtype": args.dtype,
            "device": args.device, **{name: getattr(args, name) for name in _GENERATION}}


def main(family: Family, argv: list[str] | None = None) -> int:
    args = build_parser(family).parse_args(argv)
    if args.output_dir is None:  # a preset (tiny: random weights) never shares the real run's folders
        args.output_dir = os.path.join("samples", family.name + (f"-{args.preset}" if args.preset else ""))
    if args.start < 0 or (args.num_prompts is not None and args.num_prompts < 1) or args.num_seeds < 1:
        raise SystemExit("--start must be >= 0, --num-prompts and --num-seeds >= 1")
    from videosys.utils.files import check_writable_folder

    try:
        check_writable_folder(args.output_dir, "--output-dir")  # before any prompt is read or weight loads
        load_prompts(args.prompts_file)
        summaries = [generate_variant(family, variant, args) for variant in args.variant]
    except (FileNotFoundError, ValueError) as err:  # a bad file or value: one line, no traceback
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(summaries, ensure_ascii=False))
    return 0

