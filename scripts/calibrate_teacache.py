"""Fit TeaCache's rescaling polynomial for a model (videosys/cache/calibrate.py), as the reference
fitted the published ones: over every step of uncached generations, the output's relative L1
change against the indicator's, `numpy.polyfit(x, y, 4)`.

    python scripts/calibrate_teacache.py                                   # the trained demo model
    python scripts/calibrate_teacache.py --model open-sora-plan --model-path LanguageBind/Open-Sora-Plan-v1.2.0 \
        --prompt-set builtin --device cuda

Prints the fit (points, R^2) next to how well the family's published polynomial describes the same
points, and writes JSON whose "coefficients" go to `TeaCacheConfig(coefficients=...)`, a cache spec
`{"method": "teacache", "threshold": 0.1, "coefficients": [...]}`, or `bench_cache.py --coefficients`.

`--method magcache` records MagCache's magnitude ratios instead (one per step; JSON "ratios", for
`MagCacheConfig(ratios=...)` or `{"method": "magcache", "ratios": [...]}`).

`--method forecast --computes K [K ...]` finds the output forecast's schedule computing K of the run's steps
(videosys/cache/forecast_schedule.py: open-loop dynamic programming, then a closed-loop search on the videos of
--prompts prompts spread over the set, at seed 0; JSON "schedules": K -> steps, for `{"method": "forecast",
"steps": [...], "grid": N}` or a family's cache_settings "schedules", which `forecast-s<K>` reads):

    python scripts/calibrate_teacache.py --method forecast --computes 13 19 --prompts 8 --threads 1

A pipeline that runs several transformers (Wan2.2 A14B's two experts: `pipeline.experts`) gets one table per
expert, each from that expert's own calls: JSON "experts": {"high": {...}, "low": {...}}, which
`WanConfig(cache_calibration=FILE)` reads (each expert's cache then gets its own table):

    python scripts/calibrate_teacache.py --model wan --preset tiny-a14b [--method magcache]

A reconstruction model (`--model cascadev`) calibrates on videos: the mp4 files of `--clips FOLDER`, else
`--prompts N` (default 4) demo clips (videosys/utils/demo_data.py) of `--num-frames` (default 12) frames at
the DiT's tile size.
"""

import argparse
import glob
import os
import sys

from videosys import VideoSysEngine
from videosys.cache.calibrate import calibrate, calibrate_magcache
from videosys.cache.forecast_schedule import calibrate_forecast
from videosys.eval.runs import add_model_args, model_config, prompt_list
from videosys.utils.files import write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--method", choices=("teacache", "magcache", "forecast"), default="teacache",
                        help="teacache: fit the rescaling polynomial; magcache: record the magnitude ratios; "
                             "forecast: search the output forecast's compute schedules")
    parser.add_argument("--computes", type=int, nargs="+", default=[13, 19],
                        help="forecast: how many steps each schedule computes")
    parser.add_argument("--rounds", type=int, default=4, help="forecast: closed-loop sweeps at most")
    parser.add_argument("--degree", type=int, default=4, help="polynomial degree (the reference: 4)")
    parser.add_argument("--output", default="outputs/teacache_coefficients.json")
    parser.add_argument("--clips", help="a reconstruction model (cascadev): calibrate on this folder's mp4 files")
    args = parser.parse_args(argv)
    if args.degree < 1 or args.seeds < 1 or (args.prompts is not None and args.prompts < 1) or args.rounds < 0:
        parser.error("--degree, --seeds, --prompts must be positive, --rounds not negative")
    if args.method == "forecast" and any(k < 2 for k in args.computes):
        parser.error("--computes: a schedule computes at least 2 steps (the forecast's line needs two)")
    return args


def clip_list(args, pipeline) -> tuple[list, list[str]]:
    """A reconstruction model's inputs and their names: the videos of --clips, else --prompts (default 4) demo
    clips."""
    if args.clips:
        paths = sorted(glob.glob(os.path.join(args.clips, "*.mp4")))[: args.prompts]
        if not paths:
            raise ValueError(f"no mp4 files in {args.clips!r}")
        return paths, paths
    from videosys.utils.demo_data import DemoClips

    side = pipeline.transformer.config.input_size * pipeline.vae_factor  # one DiT tile
    clips = DemoClips(num_frames=args.num_frames or 12, height=side, width=side, seed=0)
    items = [clips.item(i) for i in range(args.prompts or 4)]
    return [clip for clip, _, _ in items], [f"demo clip: {text}" for _, text, _ in items]


EXPERT_NAMES = ("high", "low")  # a pipeline's `experts`, in its order (Wan2.2: high-noise, then low-noise)


def per_expert(pipeline, fit_one) -> dict:
    """{"experts": {name: fit_one(transformer)}} for a pipeline with several experts, else fit_one(None)'s."""
    experts = getattr(pipeline, "experts", ())
    if len(experts) < 2:
        return fit_one(None)
    return {"experts": {name: fit_one(expert) for name, expert in zip(EXPERT_NAMES, experts)}}


def main(argv=None) -> int:
    args = parse_args(argv)
    config = model_config(args)
    reconstructs = hasattr(config.pipeline_cls, "reconstruct")
    prompts = names = None if reconstructs else prompt_list(args)
    if args.method == "forecast":
        prompts = prompt_list(args, spread=True)  # a schedule fitted to a few alike prompts does not carry over
        if reconstructs:
            raise ValueError(f"--method forecast needs a text-to-video model; {args.model} reconstructs videos")
        with VideoSysEngine(config) as engine:
            found = calibrate_forecast(engine.pipeline, prompts, args.computes, rounds=args.rounds)
        write_json(args.output, {"model": args.model, "preset": args.preset, "model_path": args.model_path,
                                 "method": "forecast", "prompts": prompts, "seed": 0, **found})
        for k, row in found["schedules"].items():
            starts = ", ".join(f"{name} {psnr:.2f}" for name, psnr in row["start_psnr"].items())
            print(f"{k} of {found['grid']} steps: {row['psnr']:.2f} dB (from {row['start']}; starts: {starts}); "
                  f"steps {row['steps']}")
        print(f"wrote {args.output}")
        return 0
    if args.method == "magcache":
        with VideoSysEngine(config) as engine:
            prompts, names = clip_list(args, engine.pipeline) if reconstructs else (prompts, prompts)
            tables = per_expert(engine.pipeline, lambda transformer: {"ratios": list(calibrate_magcache(
                engine.pipeline, prompts, seeds=range(args.seeds), transformer=transformer))})
        write_json(args.output, {"model": args.model, "preset": args.preset, "model_path": args.model_path,
                                 "method": "magcache", "steps": config.num_inference_steps, "prompts": names,
                                 "seeds": args.seeds, **tables})
        for name, table in tables.get("experts", {"": tables}).items():
            print(f"{name} magnitude ratios per step: [" + ", ".join(f"{r:.5f}" for r in table["ratios"]) + "]")
        print(f"wrote {args.output}")
        return 0
    with VideoSysEngine(config) as engine:
        prompts, names = clip_list(args, engine.pipeline) if reconstructs else (prompts, prompts)
        if len(getattr(engine.pipeline, "experts", ())) > 1:  # one polynomial per expert
            tables = per_expert(engine.pipeline, lambda transformer: calibrate(
                engine.pipeline, prompts, seeds=range(args.seeds), degree=args.degree,
                transformer=transformer).summary())
            write_json(args.output, {"model": args.model, "preset": args.preset, "model_path": args.model_path,
                                     "method": "teacache", "steps": config.num_inference_steps, "prompts": names,
                                     "seeds": args.seeds, "degree": args.degree, **tables})
            for name, table in tables["experts"].items():
                print(f"{name}: {table['points']} points, R^2 {table['r2']:.4f}, coefficients (highest power "
                      "first) [" + ", ".join(f"{c:.8e}" for c in table["coefficients"]) + "]")
            print(f"wrote {args.output}")
            return 0
        result = calibrate(engine.pipeline, prompts, seeds=range(args.seeds), degree=args.degree)
    table = config.cache_settings.get("teacache", {})  # the family's published polynomials, by cache key
    published = next((key for key in config.cache_models() if key in table), None)
    report = {"model": args.model, "preset": args.preset, "model_path": args.model_path, "method": "teacache",
              "steps": config.num_inference_steps, "prompts": names, "seeds": args.seeds, "degree": args.degree,
              **result.summary(), "published": published,
              "published_r2": result.r2(table[published]["coefficients"]) if published is not None else None,
              "x": result.x.tolist(), "y": result.y.tolist()}
    write_json(args.output, report)
    print(f"{report['points']} points from {len(prompts) * args.seeds} videos x {config.num_inference_steps} steps; "
          f"indicator change {report['x_range'][0]:.4f}..{report['x_range'][1]:.4f}")
    print(f"fitted (degree {args.degree}): R^2 {report['r2']:.4f}")
    if report["published_r2"] is not None:
        print(f"published {published!r} polynomial on the same points: R^2 {report['published_r2']:.4f}")
    print("coefficients (highest power first): [" + ", ".join(f"{c:.8e}" for c in result.coefficients) + "]")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
