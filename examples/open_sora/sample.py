"""Open-Sora 1.2 text-to-video.

    python examples/open_sora/sample.py                                          # tiny random model, offline, seconds
    python examples/open_sora/sample.py --model-path hpcai-tech/OpenSora-STDiT-v3 \
        --resolution 480p --aspect-ratio 9:16 --num-frames 2s                    # the release (needs a GPU)

With --model-path the VAE and the T5 come from hpcai-tech/OpenSora-VAE-v1.2 and DeepFloyd/t5-v1_1-xxl
unless --vae-path / --text-encoder-path name other folders.
"""

import argparse

from videosys import OpenSoraConfig, VideoSysEngine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="STDiT3 hub id or local folder; omitted: the tiny preset")
    parser.add_argument("--vae-path")
    parser.add_argument("--text-encoder-path")
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--resolution", help="144p, 240p, 360p, 480p, 720p")
    parser.add_argument("--aspect-ratio", help="H:W, e.g. 9:16")
    parser.add_argument("--num-frames", help="frames or a duration: 2s, 4s, 8s, 16s")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--output", default="outputs/open_sora.mp4")
    args = parser.parse_args()

    fields = dict(resolution=args.resolution, aspect_ratio=args.aspect_ratio, num_frames=args.num_frames,
                  num_inference_steps=args.steps, num_gpus=args.num_gpus)
    if args.model_path:
        config = OpenSoraConfig(model_path=args.model_path, vae_path=args.vae_path,
                                text_encoder_path=args.text_encoder_path, **fields)
    else:
        config = OpenSoraConfig(preset="tiny", **fields)
    engine = VideoSysEngine(config)
    out = engine.generate(args.prompt, seed=args.seed)
    engine.save_video(out.video[0], args.output)
    print(f"saved {args.output} ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
