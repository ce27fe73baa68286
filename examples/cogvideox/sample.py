"""CogVideoX text-to-video.

    python examples/cogvideox/sample.py                                      # tiny random model, offline, seconds
    python examples/cogvideox/sample.py --preset tiny-5b                     # tiny, with 5b's 3D RoPE
    python examples/cogvideox/sample.py --model-path THUDM/CogVideoX-2b      # the published 2b (49x480x720)
    python examples/cogvideox/sample.py --model-path THUDM/CogVideoX-5b --scheduler dpm --dynamic-cfg
    python examples/cogvideox/sample.py --cache teacache-fast                # or teacache-slow, pab
    python examples/cogvideox/sample.py --num-gpus 4 --cfg-parallel          # cond / uncond split, sp = 2 (Ulysses)
    torchrun --nproc_per_node 2 examples/cogvideox/sample.py                 # the same under torchrun (sp = 2)
"""

import argparse

from videosys import CogVideoXConfig, VideoSysEngine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="CogVideoX-2b / -5b hub id or local folder; omitted: a tiny preset")
    parser.add_argument("--preset", default="tiny", choices=sorted(CogVideoXConfig.presets),
                        help="the tiny model to use when --model-path is omitted")
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm"])
    parser.add_argument("--dynamic-cfg", action="store_true", help="guidance rising over the steps (5b demo)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes to start (ignored under torchrun)")
    parser.add_argument("--cfg-parallel", action="store_true", help="cond and uncond on different processes")
    parser.add_argument("--cache", help="none, teacache-slow, teacache-fast or pab")
    parser.add_argument("--output", default="outputs/cogvideox.mp4")
    args = parser.parse_args()

    common = dict(scheduler=args.scheduler, use_dynamic_cfg=args.dynamic_cfg, num_gpus=args.num_gpus,
                  cfg_parallel=args.cfg_parallel, cache=args.cache)
    if args.model_path:
        config = CogVideoXConfig(model_path=args.model_path, **common)
    else:
        config = CogVideoXConfig(preset=args.preset, **common)
    with VideoSysEngine(config) as engine:
        out = engine.generate(args.prompt, seed=args.seed)
        engine.save_video(out.video[0], args.output)
        if engine.rank == 0:
            print(f"saved {args.output} ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
