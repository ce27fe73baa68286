"""`videosys generate --model latte --preset tiny --prompt "..." --output out.mp4`"""

import argparse
import json
import sys

from videosys.cli_common import GENERATION, make_config
from videosys.serve import cli as serve_cli  # one way: serve.cli takes what it shares from cli_common


def build_parser() -> argparse.ArgumentParser:
    from videosys.cache import choices
    from videosys.models import FAMILIES  # a name table; no family is imported

    parser = argparse.ArgumentParser(prog="videosys", description="Text-to-video with diffusion transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate one video from a prompt")
    gen.add_argument("--model", help=f"model family: {', '.join(FAMILIES)} (or `model:` in --config)")
    gen.add_argument("--config", help="YAML config (its fields override the family's defaults)")
    gen.add_argument("--preset", help="e.g. tiny: a small random-weight model that runs offline; "
                     "demo (latte): the tiny model trained on moving shapes")
    gen.add_argument("--model-path", help="hub id or local folder of the checkpoint")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--output", default="output.mp4", help="mp4 path (written atomically)")
    for name, kind in GENERATION.items():
        gen.add_argument("--" + name.replace("_", "-"), type=kind)
    gen.add_argument("--steps", dest="num_inference_steps", type=int, help="alias of --num-inference-steps")
    gen.add_argument("--dtype", help="auto, fp32, fp16 or bf16")
    gen.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    gen.add_argument("--cache", help=f"{', '.join(choices())} (a registered method, the model's published "
                     "settings); several: a,b; @tuned.json: the pick of `videosys tune`")
    gen.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="any other config field, e.g. --set resolution=720p --set aspect_ratio=9:16 (repeatable)")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    gen.add_argument("--compile", action="store_true", help="torch.compile the transformer (compile=true)")
    serve_cli.add_parser(sub)
    _add_reconstruct(sub)
    _add_plan(sub)
    from videosys.eval import bench, tune

    bench.add_parser(sub)
    tune.add_parser(sub)
    return parser


def _add_reconstruct(sub) -> None:
    """`videosys reconstruct --input clip.mp4 --output rec.mp4`: a video autoencoder (CascadeV) round trip."""
    rec = sub.add_parser("reconstruct", help="encode a video to CascadeV's 1x32x32 latent and reconstruct it")
    rec.add_argument("--input", required=True, help="video file")
    rec.add_argument("--output", default="reconstruction.mp4", help="mp4 path (written atomically)")
    rec.add_argument("--model", default="cascadev")
    for flag in ("--config", "--preset", "--model-path", "--dtype", "--device"):
        rec.add_argument(flag)
    rec.add_argument("--seed", type=int, help="default: the config's (42, as the release)")
    rec.add_argument("--steps", dest="num_inference_steps", type=int)
    rec.add_argument("--num-frames", type=int, help="reconstruct the first N frames (default: all)")
    rec.add_argument("--size", type=int, help="resize the short edge to this (0: keep); default: the model's")
    rec.add_argument("--fps", type=int, help="default: the input's")
    rec.add_argument("--cache", help="a cache on the DiT, as for generate (docs/families/cascadev.md: which apply); "
                     "several: a,b")
    rec.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    rec.add_argument("--no-progress", action="store_true")
    rec.set_defaults(height=None, width=None, guidance_scale=None)


def _add_plan(sub) -> None:
    """`videosys plan --model wan --vram 8GB`: predicted peak memory per stage and the plan that fits (no weights)."""
    plan = sub.add_parser("plan", help="predict peak device memory per stage and pick offload / quantization that "
                          "fits --vram (seconds on a CPU, no weights)")
    plan.add_argument("--model", help="model family (or `model:` in --config)")
    for flag in ("--config", "--preset", "--model-path", "--dtype", "--device"):
        plan.add_argument(flag)
    for name, kind in GENERATION.items():
        plan.add_argument("--" + name.replace("_", "-"), type=kind)
    plan.add_argument("--cache", help="a cache method (its state is counted); several: a,b")
    plan.add_argument("--num-gpus", type=int, help="processes (the planner counts one; see docs/memory.md)")
    plan.add_argument("--vram", help="device memory to fit in, e.g. 24GB (GiB, as a card reports it)")
    plan.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    plan.set_defaults(no_progress=True)


def _plan(args) -> int:
    from videosys.core import planner

    if args.num_gpus is not None:
        args.set.append(f"num_gpus={args.num_gpus}")
    try:
        config = make_config(args)
        budget = planner.parse_bytes(args.vram) if args.vram else None
        choice = planner.choose(config, budget=budget)
    except ValueError as err:
        print(f"videosys: error: {err}", file=sys.stderr)
        return 2
    print(planner.table(choice))
    return 0 if choice.fits else 2


def _reconstruct(args, engine_cls) -> int:
    if args.size is not None:
        args.set.append(f"size={args.size}")
    try:
        from videosys.utils.video import check_video_path, probe_video

        probe_video(args.input, "--input")  # a video ffmpeg decodes (not a text file), before any weight loads
        check_video_path(args.output)  # likewise: a folder we can write in
        with engine_cls(make_config(args)) as engine:
            out = engine.reconstruct(args.input, seed=args.seed)
            path = engine.save_video(out.video[0], args.output, fps=args.fps or round(out.fps))
    except (ValueError, FileNotFoundError) as err:
        print(f"videosys: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"output": path, **{k: round(v, 3) if isinstance(v, float) else v for k, v in out.stats.items()}}))
    return 0


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # the engine has shut its workers down (they ignore Ctrl-C): one line, no traceback
        print("videosys: interrupted", file=sys.stderr)
        return 130


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    from videosys.core.config import check_prompt
    from videosys.core.engine import VideoSysEngine
    from videosys.core.pipeline import NonFiniteError
    from videosys.utils.video import check_video_path

    if args.command == "reconstruct":
        return _reconstruct(args, VideoSysEngine)
    if args.command == "plan":
        return _plan(args)
    if args.command == "bench":
        from videosys.eval import bench

        return bench.run_args(args)
    if args.command == "tune":
        from videosys.eval import tune

        return tune.run_args(args)
    try:
        if args.command == "serve":
            return serve_cli.run(args)
        check_video_path(args.output)  # before any weight loads or compute
        check_prompt(args.prompt)  # likewise: a non-UTF-8 --prompt (lone surrogates) fails here, named
        with VideoSysEngine(make_config(args)) as engine:
            out = engine.generate(args.prompt, negative_prompt=args.negative_prompt, seed=args.seed)
            path = engine.save_video(out.video[0], args.output)
    except (ValueError, FileNotFoundError) as err:  # bad input or missing weights: say it, no traceback
        print(f"videosys: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:  # NaN weights, fp16 overflow: no (black) video written
        print(f"videosys: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"output": path, **{k: round(v, 3) if isinstance(v, float) else v
                                          for k, v in out.stats.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
