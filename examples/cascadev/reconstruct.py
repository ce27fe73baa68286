"""CascadeV video reconstruction through its 1x32x32 latent.

    python examples/cascadev/reconstruct.py                                   # tiny random model on a demo clip, offline
    python examples/cascadev/reconstruct.py --input clip.mp4 --model-path ByteDance/CascadeV   # the release
    python examples/cascadev/reconstruct.py --input clip.mp4 --model-path ... --num-gpus 2     # DiT sequence parallel
"""

import argparse

from videosys import CascadeVConfig, VideoSysEngine
from videosys.utils.demo_data import make_clip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="video file; omitted: a procedural demo clip (16x64x64)")
    parser.add_argument("--model-path", help="the DiT (ByteDance/CascadeV) or a saved folder; omitted: tiny preset")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--output", default="outputs/cascadev.mp4")
    args = parser.parse_args()

    common = dict(num_gpus=args.num_gpus, num_frames=args.num_frames, num_inference_steps=args.steps)
    config = CascadeVConfig(model_path=args.model_path, **common) if args.model_path else \
        CascadeVConfig(preset="tiny", **common)
    video = args.input or make_clip("red", "circle", "right", num_frames=16, height=64, width=64)
    with VideoSysEngine(config) as engine:
        out = engine.reconstruct(video)
        engine.save_video(out.video[0], args.output, fps=round(out.fps))
        if engine.rank == 0:
            print(f"saved {args.output} ({out.video.shape[1]} frames, {out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
