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
"""

import argparse
import sys

from videosys import VideoSysEngine
from videosys.cache.calibrate import calibrate, calibrate_magcache
from videosys.cache.teacache import COEFFICIENTS
from videosys.eval.runs import add_model_args, model_config, prompt_list
from videosys.utils.files import write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--method", choices=("teacache", "magcache"), default="teacache",
                        help="teacache: fit the rescaling polynomial; magcache: record the magnitude ratios")
    parser.add_argument("--degree", type=int, default=4, help="polynomial degree (the reference: 4)")
    parser.add_argument("--output", default="outputs/teacache_coefficients.json")
    args = parser.parse_args(argv)
    if args.degree < 1 or args.seeds < 1 or (args.prompts is not None and args.prompts < 1):
        parser.error("--degree, --seeds and --prompts must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    config = model_config(args)
    prompts = prompt_list(args)
    if args.method == "magcache":
        with VideoSysEngine(config) as engine:
            ratios = calibrate_magcache(engine.pipeline, prompts, seeds=range(args.seeds))
        write_json(args.output, {"model": args.model, "preset": args.preset, "model_path": args.model_path,
                                 "steps": config.num_inference_steps, "prompts": prompts, "seeds": args.seeds,
                                 "ratios": list(ratios)})
        print("magnitude ratios per step: [" + ", ".join(f"{r:.5f}" for r in ratios) + "]")
        print(f"wrote {args.output}")
        return 0
    with VideoSysEngine(config) as engine:
        result = calibrate(engine.pipeline, prompts, seeds=range(args.seeds), degree=args.degree)
    published = next((key for key in config.cache_models() if key in COEFFICIENTS), None)
    report = {"model": args.model, "preset": args.preset, "model_path": args.model_path,
              "steps": config.num_inference_steps, "prompts": prompts, "seeds": args.seeds, "degree": args.degree,
              **result.summary(), "published": published,
              "published_r2": result.r2(COEFFICIENTS[published]) if published is not None else None,
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
