"""Latte text-to-video.

    python examples/latte/sample.py                                  # the trained demo model, offline, seconds
    python examples/latte/sample.py --preset tiny                    # tiny random model (noise-like output)
    python examples/latte/sample.py --model-path maxin-cn/Latte-1    # the published model (16x512x512)
    python examples/latte/sample.py --num-gpus 2 --cfg-parallel      # 2 processes: cond / uncond split
    torchrun --nproc_per_node 2 examples/latte/sample.py             # the same under torchrun (sp = 2)
"""

import argparse

from videosys import LatteConfig, VideoSysEngine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="Latte-1 hub id or local folder; omitted: --preset")
    parser.add_argument("--preset", default="demo", choices=("demo", "demo-skip", "tiny"),
                        help="without --model-path: demo (trained on moving shapes) or tiny (random weights)")
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-gpus", type=int, default=1, help="processes to start (ignored under torchrun)")
    parser.add_argument("--cfg-parallel", action="store_true", help="cond and uncond on different processes")
    parser.add_argument("--cache", help="none, teacache-slow, teacache-fast or pab")
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--output", default="outputs/latte.mp4")
    args = parser.parse_args()

    common = dict(num_gpus=args.num_gpus, cfg_parallel=args.cfg_parallel, cache=args.cache,
                  num_frames=args.num_frames, num_inference_steps=args.steps)
    if args.model_path:
        config = LatteConfig(model_path=args.model_path, **common)
    else:
        config = LatteConfig(preset=args.preset, **common)
    with VideoSysEngine(config) as engine:
        out = engine.generate(args.prompt, seed=args.seed)
        engine.save_video(out.video[0], args.output)
        if engine.rank == 0:
            print(f"saved {args.output} ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
