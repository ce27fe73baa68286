"""`videosys serve --model latte --preset demo [--num-gpus N] [--max-batch B] [--replicas N] [--api-key KEY] [--host 127.0.0.1 --port 8000]`"""

import argparse
import os
import sys

API_KEY_ENV = "VIDEOSYS_API_KEY"


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help="an HTTP service and web page that generate with one loaded model")
    serve.add_argument("--model", help="model family: latte, open-sora, open-sora-plan, cogvideox")
    serve.add_argument("--config", help="YAML config (its fields override the family's defaults)")
    serve.add_argument("--preset", help="e.g. demo (latte): the tiny trained model; tiny: random weights")
    serve.add_argument("--model-path", help="hub id or local folder of the checkpoint")
    serve.add_argument("--num-gpus", type=int, help="processes (one GPU each on CUDA)")
    serve.add_argument("--dtype", help="auto, fp32, fp16 or bf16")
    serve.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    serve.add_argument("--cache", help="the default cache of a request (a registered name: none, teacache-slow, "
                       "pab, ...; @tuned.json: the pick of `videosys tune` for this model)")
    serve.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="any other config field (repeatable), e.g. --set num_inference_steps=20")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--output-dir", default="videosys-serve", help="job records and videos (kept across restarts)")
    serve.add_argument("--max-queue", type=int, default=8, help="jobs waiting at most; more get HTTP 429")
    serve.add_argument("--max-batch", type=int, default=1,
                       help="queued jobs that differ only in prompt and seed run as one batch of up to this many")
    serve.add_argument("--replicas", type=int, default=0,
                       help="N engines on Ray Serve behind the one API (0: the engine in this process)")
    serve.add_argument("--ray-address", default=None,
                       help="a Ray cluster to run the replicas on (e.g. auto, or head-node:6379); default: a local one")
    serve.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs (and torch threads) per replica")
    serve.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                       help=f"clients must send it as `Authorization: Bearer <key>` (default: ${API_KEY_ENV}; "
                            "none: no key needed)")
    # make_config reads the generation flags of `generate`; a server takes them per request instead
    serve.set_defaults(num_frames=None, height=None, width=None, num_inference_steps=None, guidance_scale=None,
                       fps=None, no_progress=True)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("videosys: error: `videosys serve` needs fastapi and uvicorn: pip install 'videosys[serve]'",
              file=sys.stderr)
        return 2

    from videosys.cli_common import make_config
    from videosys.core.engine import VideoSysEngine
    from videosys.serve.app import create_app
    from videosys.utils.files import check_writable_folder

    if args.num_gpus is not None:
        args.set = [*args.set, f"num_gpus={args.num_gpus}"]
    check_writable_folder(args.output_dir, "--output-dir")  # before the weights load
    config = make_config(args)
    common = dict(api_key=args.api_key or None, max_batch=args.max_batch)
    if args.replicas > 0:
        from videosys.serve.replicas import RayBackend

        backend = RayBackend(config, args.replicas, args.ray_address, args.cpus_per_replica)
        app = create_app(None, args.output_dir, args.max_queue, config=config, backend=backend,
                         workers=args.replicas, **common)
    else:
        engine = VideoSysEngine(config)  # the weights, loaded once (and the workers, with num_gpus > 1)
        app = create_app(engine, args.output_dir, args.max_queue, rebuild_engine=lambda: VideoSysEngine(config),
                         **common)
    try:
        uvicorn.run(app, host=args.host, port=args.port)
    finally:
        app.state.runner.backend.shutdown()
    return 0
