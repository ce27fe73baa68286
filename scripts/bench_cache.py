"""What each cache buys and costs on one family: speed-up against fidelity (and prompt accuracy).

    python scripts/bench_cache.py                                       # the trained demo model: the frontier
    python scripts/bench_cache.py --model latte --preset tiny --prompt-set builtin --variants none pab
    python scripts/bench_cache.py --model latte --model-path maxin-cn/Latte-1 --device cuda --prompt-set builtin

One engine is built; the caches are switched on it between runs (no weight reloads). For each
variant (no cache, TeaCache at several thresholds, the PAB presets): end-to-end and transformer
time per video, speed-up over no cache, the share of steps TeaCache computed, PSNR / SSIM /
LPIPS of each video against the uncached one with the same prompt and seed (per the protocol in
eval/common_metrics; LPIPS when its weights are available), and with `--prompt-set demo` the
colour-and-direction accuracy of scripts/eval_demo.py's tracker over its fixed 24 prompts. Times
are medians over --repeats rounds that each generate one video with every variant in turn (after a
warm-up round), so a machine that speeds up or slows down affects every variant alike. Prints a
table, writes JSON and a PNG of the frontier (eval/plot_frontier.py's plot).
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

from videosys import VideoSysEngine
from videosys.cache import METHODS, choices, sweep_names
from videosys.eval import demo as eval_demo
from videosys.eval.frontier import plot
from videosys.eval.metrics import average_per_frame, video_metrics
from videosys.eval.runs import add_model_args, model_config, prompt_list
from videosys.utils.files import write_json

VARIANTS = tuple(sweep_names())  # "none" and every registered method's frontier variants


def timed_transformer(pipeline):
    """Wrap the transformer's forward to sum its wall time (synchronising on CUDA at each call's end)."""
    transformer = pipeline.transformer
    forward = transformer.forward
    spent = [0.0]

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        spent[0] += time.perf_counter() - start
        return out

    transformer.forward = wrapper
    return spent


def lpips_model_or_none(device):
    try:
        from videosys.eval.lpips import load_lpips

        return load_lpips(device=device)
    except (FileNotFoundError, RuntimeError, OSError) as err:
        print(f"(LPIPS skipped: {str(err).splitlines()[0]})")
        return None


def run_variant(engine, jobs) -> tuple[dict, list]:
    """Every (prompt, seed) job once: the videos and the caches' statistics of the last one."""
    videos, stats = [], {}
    for prompt, seed in jobs:
        out = engine.generate(prompt, seed=seed)
        videos.append(out.video[0].numpy())
        stats = out.stats
    return {name: value for name, value in stats.items() if name in METHODS}, videos


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


def time_variants(engine, spent, variants, jobs, rounds: int, coefficients=None) -> dict:
    """Median end-to-end and transformer seconds per video of each variant, timed in interleaved rounds
    (every variant once per round, in an order rotated each round, round r on job r), so drift of the
    machine hits them all alike."""
    times = {v: [] for v in variants}
    for r in range(rounds + 1):  # round 0 warms every variant up and is not counted
        prompt, seed = jobs[r % len(jobs)]
        shift = r % len(variants)  # rotate the order: no variant always runs first after the switch
        for variant in variants[shift:] + variants[:shift]:
            engine.set_cache(cache_spec(variant, coefficients))
            spent[0] = 0.0
            total = engine.generate(prompt, seed=seed).stats["total_s"]
            if r:
                times[variant].append((total, spent[0]))
    return {v: {"total_s": statistics.median(t[0] for t in runs), "transformer_s": statistics.median(t[1] for t in runs)}
            for v, runs in times.items()}


def fidelity(baseline: list, videos: list, lpips, device) -> dict:
    """PSNR / SSIM / LPIPS of each video against the baseline video of the same job, averaged per frame."""
    names = ("psnr", "ssim", "lpips") if lpips is not None else ("psnr", "ssim")
    curves = {name: [] for name in names}
    for ref, video in zip(baseline, videos):
        for name, values in video_metrics(ref, video, names, lpips, device=device).items():
            curves[name].append(values)
    return {name: average_per_frame(values)[0] for name, values in curves.items()}


def table(results: dict, with_lpips: bool, with_accuracy: bool) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    head = f"{'variant':<15}{'total s':>9}{'transf. s':>10}{'speed-up':>9}{'computed':>9}{'PSNR':>8}{'SSIM':>8}"
    head += f"{'LPIPS':>8}" if with_lpips else ""
    head += f"{'accuracy':>9}" if with_accuracy else ""
    lines = [head]
    for variant, row in results.items():
        tea = row.get("teacache")
        computed = f"{tea['computed_steps']}/{tea['computed_steps'] + tea['reused_steps']}" if tea else "all"
        line = (f"{variant:<15}{row['total_s']:>9.3f}{row['transformer_s']:>10.3f}{row['speedup']:>8.2f}x"
                f"{computed:>9}{fmt(row.get('psnr'), '.2f'):>8}{fmt(row.get('ssim'), '.4f'):>8}")
        line += f"{fmt(row.get('lpips'), '.4f'):>8}" if with_lpips else ""
        line += f"{fmt(row.get('accuracy'), '.3f'):>9}" if with_accuracy else ""
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS),
                        help=f"cache specs: {', '.join(choices())}, teacache-cal-<threshold> (with --coefficients); "
                             "a+b runs two methods at once")
    parser.add_argument("--coefficients", help="JSON of scripts/calibrate_teacache.py: its polynomial for "
                                               "the teacache-cal-<threshold> variants")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timing rounds: each times every variant once, interleaved (median per variant)")
    parser.add_argument("--output", default="outputs/bench_cache.json", help="JSON; the PNG goes beside it")
    args = parser.parse_args(argv)
    if "none" not in args.variants:
        parser.error("--variants must include none (the baseline every other variant is compared with)")
    if any(v.startswith("teacache-cal-") for v in args.variants) and not args.coefficients:
        parser.error("teacache-cal-<threshold> variants need --coefficients")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    config = model_config(args)
    prompts = prompt_list(args)
    jobs = [(prompt, seed) for prompt in prompts for seed in range(args.seeds)]
    device = config.torch_device()
    lpips = lpips_model_or_none(device)
    variants = ["none"] + [v for v in args.variants if v != "none"]
    coefficients = None
    if args.coefficients:
        with open(args.coefficients) as f:
            coefficients = json.load(f)["coefficients"]

    results, baseline = {}, None
    with VideoSysEngine(config) as engine:
        spent = timed_transformer(engine.pipeline)
        timings = time_variants(engine, spent, variants, jobs, args.repeats, coefficients)
        for variant in variants:
            engine.set_cache(cache_spec(variant, coefficients))
            row, videos = run_variant(engine, jobs)
            row.update(timings[variant])
            if baseline is None:
                baseline = videos
            else:
                row.update(fidelity(baseline, videos, lpips, device))
            if args.prompt_set == "demo":
                rows = [eval_demo.row(f"{p}-{s}", p, v) for (p, s), v in zip(jobs, videos)]
                row["accuracy_detail"] = eval_demo.score(rows)
                row["accuracy"] = row["accuracy_detail"]["both"]
            results[variant] = row
            print(f"{variant}: {row['total_s']:.3f} s/video", flush=True)

    for row in results.values():
        row["speedup"] = results["none"]["total_s"] / row["total_s"]
        row["transformer_speedup"] = results["none"]["transformer_s"] / row["transformer_s"]
    name = args.model_path or args.preset
    print(f"{args.model} ({name}) on {device}, {config.num_inference_steps} steps, "
          f"{config.num_frames}x{config.height}x{config.width}, {len(jobs)} videos per variant, "
          f"times: median of {args.repeats} interleaved rounds")
    print(table(results, lpips is not None, args.prompt_set == "demo"))

    report = {"model": args.model, "preset": args.preset, "model_path": args.model_path, "device": str(device),
              "steps": config.num_inference_steps, "prompt_set": args.prompt_set, "prompts": prompts,
              "seeds": args.seeds, "repeats": args.repeats, "threads": torch.get_num_threads(), "results": results}
    write_json(args.output, report)
    points = [{"variant": v, **row} for v, row in results.items() if v != "none"]
    png = os.path.splitext(args.output)[0] + ".png"
    plot(points, png, f"{args.model} ({os.path.basename(os.path.normpath(name))}): speed / fidelity",
         baselines={"accuracy": results["none"].get("accuracy"), "ssim": 1.0}, optional=("ssim", "accuracy"))
    print(f"wrote {args.output} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
