"""LaVie text-to-video: the base stage (16 x 320 x 512, 50 DDPM steps, cfg 7.5), a UNet; with --stages the cascade
(interpolation to 61 frames, x4 video super-resolution).

    python examples/lavie/sample.py                                  # tiny random model, offline, seconds
    python examples/lavie/sample.py --cache deepcache                # DeepCache: the deep features reused 2 steps in 3
    python examples/lavie/sample.py --cache teacache-fast            # TeaCache (the tiny model's own polynomial)
    python examples/lavie/sample.py --model-path ./pretrained_models  # the release: lavie_base.pt, stable-diffusion-v1-4/
    python examples/lavie/sample.py --model-path YaohuiW/LaVie --sd-path CompVis/stable-diffusion-v1-4  # from the hub
    python examples/lavie/sample.py --num-gpus 2 --cfg-parallel      # cond / uncond on one process each
    python examples/lavie/sample.py --stages base,interpolation,vsr  # the whole cascade (tiny: 4 -> 13 frames, 128 px)
"""

import argparse

from videosys import LaVieConfig, VideoSysEngine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="the release's pretrained_models folder (lavie_base.pt, "
                        "stable-diffusion-v1-4/) or the hub repository of its .pt files; omitted: the tiny preset")
    parser.add_argument("--sd-path", help="SD-1.4's folder or hub id (vae/, text_encoder/, tokenizer/) when "
                        "--model-path has no stable-diffusion-v1-4/")
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the release's 50)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes to start (ignored under torchrun)")
    parser.add_argument("--cfg-parallel", action="store_true", help="cond and uncond on different processes")
    parser.add_argument("--cache", help="none, deepcache, deepcache-<interval>, teacache-fast (tiny), fbcache, ...")
    parser.add_argument("--stages", default="base", help="base, base,interpolation or base,interpolation,vsr "
                        "(the cascade's stages; --model-path then needs lavie_interpolation.pt / lavie_vsr.pt and "
                        "stable-diffusion-x4-upscaler/ too)")
    parser.add_argument("--output", default="outputs/lavie.mp4")
    args = parser.parse_args()

    common = dict(num_gpus=args.num_gpus, cfg_parallel=args.cfg_parallel, cache=args.cache,
                  num_inference_steps=args.steps, sd_path=args.sd_path, stages=args.stages)
    config = LaVieConfig(model_path=args.model_path, **common) if args.model_path else \
        LaVieConfig(preset="tiny", **common)
    with VideoSysEngine(config) as engine:
        out = engine.generate(args.prompt, seed=args.seed)
        engine.save_video(out.video[0], args.output)
        if engine.rank == 0:
            print(f"saved {args.output} ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
