"""Open-Sora-Plan text-to-video, v1.2 (default) or v1.1 (--version v110).

    python examples/open_sora_plan/sample.py                              # tiny random model, offline, seconds
    python examples/open_sora_plan/sample.py --version v110               # the same with v1.1's classes
    python examples/open_sora_plan/sample.py \
        --model-path LanguageBind/Open-Sora-Plan-v1.2.0 --transformer-type 29x480p   # the release (+ google/mt5-xxl)
    python examples/open_sora_plan/sample.py --version v110 \
        --model-path LanguageBind/Open-Sora-Plan-v1.1.0 --transformer-type 65x512x512  # (+ DeepFloyd/t5-v1_1-xxl)
    python examples/open_sora_plan/sample.py --num-gpus 2 --cfg-parallel  # 2 processes: cond / uncond split
    torchrun --nproc_per_node 2 examples/open_sora_plan/sample.py         # the same under torchrun (Ulysses sp = 2)
"""

import argparse

from videosys import OpenSoraPlanConfig, VideoSysEngine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="LanguageBind/Open-Sora-Plan-v1.2.0 or a local folder; omitted: tiny")
    parser.add_argument("--version", default="v120", choices=["v110", "v120"], help="Open-Sora-Plan v1.1 or v1.2")
    parser.add_argument("--transformer-type", help="v1.2: 29x480p (default), 29x720p, 93x480p, 93x720p; "
                                                   "v1.1: 65x512x512 (default), 221x512x512")
    parser.add_argument("--text-encoder-path", help="text encoder folder or hub id (default: the version's, "
                                                    "google/mt5-xxl or DeepFloyd/t5-v1_1-xxl)")
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-gpus", type=int, default=1, help="processes to start (ignored under torchrun)")
    parser.add_argument("--cfg-parallel", action="store_true", help="cond and uncond on different processes")
    parser.add_argument("--cache", help="none, teacache-slow, teacache-fast or pab")
    parser.add_argument("--num-frames", type=int, help="1 + 4k frames, e.g. 29, 65, 93 or 221")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--output", default="outputs/open_sora_plan.mp4")
    args = parser.parse_args()

    common = dict(num_gpus=args.num_gpus, cfg_parallel=args.cfg_parallel, cache=args.cache,
                  num_frames=args.num_frames, num_inference_steps=args.steps, version=args.version,
                  transformer_type=args.transformer_type)
    if args.model_path:
        config = OpenSoraPlanConfig(model_path=args.model_path, text_encoder_path=args.text_encoder_path, **common)
    else:
        config = OpenSoraPlanConfig(preset="tiny", **common)
    with VideoSysEngine(config) as engine:
        out = engine.generate(args.prompt, seed=args.seed)
        engine.save_video(out.video[0], args.output)
        if engine.rank == 0:
            print(f"saved {args.output} ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
