"""HunyuanVideo-1.5 text- and image-to-video.

    python examples/hunyuanvideo15/sample.py                                  # tiny random T2V model, offline, seconds
    python examples/hunyuanvideo15/sample.py --preset tiny-i2v                # tiny I2V (a made-up first frame)
    python examples/hunyuanvideo15/sample.py --model-path hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v
    python examples/hunyuanvideo15/sample.py --model-path hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_i2v \
        --image first_frame.png                                               # I2V: the size follows the image
    python examples/hunyuanvideo15/sample.py --model-path ...-480p_t2v --cache magcache   # the authors' MagCache
    python examples/hunyuanvideo15/sample.py --num-gpus 4 --cfg-parallel      # cond / uncond split, sp = 2 (Ulysses)
    torchrun --nproc_per_node 2 examples/hunyuanvideo15/sample.py             # the same under torchrun (sp = 2)

Quoted text in the prompt ("OPEN") goes to the ByT5 glyph encoder, as in the release.
"""

import argparse

from videosys import VideoSysEngine
from videosys.models.hunyuanvideo15.pipeline import HunyuanVideo15Config


def gradient_image(height: int = 60, width: int = 100):
    """A stand-in first frame for the tiny I2V model."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[:height, :width] / max(height, width)
    rgb = np.stack([x, y, 1 - x], -1)
    return Image.fromarray((rgb * 255).astype("uint8"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="a HunyuanVideo-1.5 diffusers checkpoint (hub id or folder); omitted: "
                                             "a tiny preset")
    parser.add_argument("--preset", default="tiny", choices=sorted(HunyuanVideo15Config.presets))
    parser.add_argument("--prompt", default='a red sign that reads "OPEN" on a wooden door')
    parser.add_argument("--image", help="I2V: the first frame (image file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-gpus", type=int, default=1, help="processes to start (ignored under torchrun)")
    parser.add_argument("--cfg-parallel", action="store_true", help="cond and uncond on different processes")
    parser.add_argument("--cache", help="a registered cache name, e.g. magcache (published for the T2V checkpoints)")
    parser.add_argument("--output", default="outputs/hunyuanvideo15.mp4")
    args = parser.parse_args()

    common = dict(num_gpus=args.num_gpus, cfg_parallel=args.cfg_parallel, cache=args.cache)
    if args.model_path:
        config = HunyuanVideo15Config(model_path=args.model_path, **common)
    else:
        config = HunyuanVideo15Config(preset=args.preset, **common)
    image = args.image
    if image is None and config.task == "i2v" and config.preset is not None:
        image = gradient_image()
    with VideoSysEngine(config) as engine:
        out = engine.generate(args.prompt, seed=args.seed, image=image)
        engine.save_video(out.video[0], args.output)
        if engine.rank == 0:
            print(f"saved {args.output} ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
