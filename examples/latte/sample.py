"""Latte text-to-video.

    python examples/latte/sample.py                                  # tiny random model, offline, seconds
    python examples/latte/sample.py --model-path maxin-cn/Latte-1    # the published model (16x512x512)
"""

import argparse

from videosys import LatteConfig, VideoSysEngine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="Latte-1 hub id or local folder; omitted: the tiny preset")
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--output", default="outputs/latte.mp4")
    args = parser.parse_args()

    if args.model_path:
        config = LatteConfig(model_path=args.model_path, num_gpus=args.num_gpus)
    else:
        config = LatteConfig(preset="tiny", num_gpus=args.num_gpus)
    engine = VideoSysEngine(config)
    out = engine.generate(args.prompt, seed=args.seed)
    engine.save_video(out.video[0], args.output)
    print(f"saved {args.output} ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
