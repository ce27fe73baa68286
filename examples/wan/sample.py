"""Wan 2.1 / 2.2 text-to-video and image-to-video.

    python examples/wan/sample.py                                            # tiny random T2V model, offline, seconds
    python examples/wan/sample.py --preset tiny-a14b                         # tiny, Wan2.2 A14B's two experts
    python examples/wan/sample.py --preset tiny-i2v --image first.png        # tiny, Wan2.1 I2V (CLIP image tokens)
    python examples/wan/sample.py --preset tiny-ti2v [--image first.png]     # tiny, Wan2.2 TI2V-5B
    python examples/wan/sample.py --model-path Wan-AI/Wan2.1-T2V-1.3B-Diffusers      # 81 x 480 x 832, 50 steps
    python examples/wan/sample.py --model-path Wan-AI/Wan2.2-T2V-A14B-Diffusers      # two experts, 40 steps
    python examples/wan/sample.py --model-path Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --image first.png
    python examples/wan/sample.py --model-path ./Wan2.1-T2V-1.3B \\
        --vae-path Wan-AI/Wan2.1-T2V-1.3B-Diffusers --text-encoder-path Wan-AI/Wan2.1-T2V-1.3B-Diffusers  # original
    python examples/wan/sample.py --cache teacache-slow                      # teacache-fast, magcache-0.12, easycache
    python examples/wan/sample.py --num-gpus 4 --cfg-parallel                # cond / uncond split, sp = 2 (Ulysses)
"""

import argparse

from videosys import VideoSysEngine, WanConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="a Wan-AI/...-Diffusers hub id or folder, or an original Wan folder; "
                        "omitted: a tiny preset")
    parser.add_argument("--preset", default="tiny", choices=sorted(WanConfig.presets),
                        help="the tiny model to use when --model-path is omitted")
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--image", help="the first frame (image-to-video; required by the I2V releases)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-path", help="an original-layout --model-path: where vae/ is")
    parser.add_argument("--text-encoder-path", help="an original-layout --model-path: where text_encoder/ is")
    parser.add_argument("--image-encoder-path", help="an original-layout Wan2.1 I2V: where image_encoder/ is")
    parser.add_argument("--vae-tiling", action="store_true", help="decode in spatial tiles (less memory)")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes to start (ignored under torchrun)")
    parser.add_argument("--cfg-parallel", action="store_true", help="cond and uncond on different processes")
    parser.add_argument("--cache", help="none, teacache-slow, teacache-fast, magcache-<threshold>, easycache, ...")
    parser.add_argument("--output", default="outputs/wan.mp4")
    args = parser.parse_args()

    common = dict(num_gpus=args.num_gpus, cfg_parallel=args.cfg_parallel, cache=args.cache,
                  vae_tiling=args.vae_tiling, vae_path=args.vae_path, text_encoder_path=args.text_encoder_path,
                  image_encoder_path=args.image_encoder_path)
    if args.model_path:
        config = WanConfig(model_path=args.model_path, **common)
    else:
        config = WanConfig(preset=args.preset, **common)
    with VideoSysEngine(config) as engine:
        out = engine.generate(args.prompt, seed=args.seed, image=args.image)
        engine.save_video(out.video[0], args.output)
        if engine.rank == 0:
            print(f"saved {args.output} ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
