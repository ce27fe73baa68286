"""Open-Sora 1.2: text-to-video, image-to-video, video extension and looping.

    python examples/open_sora/sample.py                                          # tiny random model, offline, seconds
    python examples/open_sora/sample.py --task i2v                               # ... from an image
    python examples/open_sora/sample.py --task extend                            # ... continuing a video
    python examples/open_sora/sample.py --loop 2 --num-frames 34                 # two clips, the second continuing
    python examples/open_sora/sample.py --model-path hpcai-tech/OpenSora-STDiT-v3 \
        --resolution 480p --aspect-ratio 9:16 --num-frames 2s                    # the release (needs a GPU)
    python examples/open_sora/sample.py --model-path hpcai-tech/OpenSora-STDiT-v3 --num-frames 2s \
        --reference cliff.png --mask-strategy 0                                  # the release's image-to-video

Without --reference, i2v and extend first make a text-to-video clip and condition on it: i2v on
its first frame (mask strategy "0"), extend on its last 5 latent frames = 17 video frames
("0,0,-5,0,5": from the reference's latent frame -5, at the new clip's latent frame 0, 5 long).
--loop N generates N clips, each continuing the previous one (on the last 5 latent frames = 17 video frames,
so a clip needs more: 34 frames, the default here with --loop). Mask strategies are the release's
(videosys/models/open_sora/conditioning.py); positions count latent frames (17 video frames -> 5).

With --model-path the VAE and the T5 come from hpcai-tech/OpenSora-VAE-v1.2 and DeepFloyd/t5-v1_1-xxl
unless --vae-path / --text-encoder-path name other folders.
"""

import argparse

from videosys import OpenSoraConfig, VideoSysEngine

DEFAULT_MASK = {"i2v": "0", "extend": "0,0,-5,0,5"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", help="STDiT3 hub id or local folder; omitted: the tiny preset")
    parser.add_argument("--vae-path")
    parser.add_argument("--text-encoder-path")
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--task", choices=("t2v", "i2v", "extend"), default="t2v")
    parser.add_argument("--reference", help="image or video file(s) to condition on (';' joins several)")
    parser.add_argument("--mask-strategy", help="where the reference goes, e.g. 0 or 0,0,-5,0,5 (see the docstring)")
    parser.add_argument("--loop", type=int, help="clips, each continuing the last (the release's --loop)")
    parser.add_argument("--resolution", help="144p, 240p, 360p, 480p, 720p")
    parser.add_argument("--aspect-ratio", help="H:W, e.g. 9:16")
    parser.add_argument("--num-frames", help="frames or a duration: 2s, 4s, 8s, 16s")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--output", default="outputs/open_sora.mp4")
    args = parser.parse_args()

    # tiny: 2 VAE chunks where a reference or the loop conditions on one of them
    num_frames = args.num_frames or (None if args.model_path or (args.task == "t2v" and not args.loop) else 34)
    fields = dict(resolution=args.resolution, aspect_ratio=args.aspect_ratio, num_frames=num_frames,
                  num_inference_steps=args.steps, num_gpus=args.num_gpus)
    try:  # bad values (a loop without room, a reference that is not an image) in one line, before weights load
        if args.model_path:
            config = OpenSoraConfig(model_path=args.model_path, vae_path=args.vae_path,
                                    text_encoder_path=args.text_encoder_path, **fields)
        else:
            config = OpenSoraConfig(preset="tiny", **fields)
        config.check_request(dict(loop=args.loop, reference=args.reference, mask_strategy=args.mask_strategy))
    except ValueError as err:
        parser.error(str(err))
    with VideoSysEngine(config) as engine:
        reference, mask_strategy = args.reference, args.mask_strategy
        if args.task != "t2v":
            if reference is None:  # offline: condition on a clip made here
                clip = engine.generate(args.prompt, seed=args.seed + 1).video[0]  # (T, H, W, 3) uint8
                reference = clip[0] if args.task == "i2v" else clip
            mask_strategy = mask_strategy or DEFAULT_MASK[args.task]
        out = engine.generate(args.prompt, seed=args.seed, reference=reference, mask_strategy=mask_strategy,
                              loop=args.loop)
        engine.save_video(out.video[0], args.output)
    print(f"saved {args.output}: {out.video.shape[1]} frames ({out.stats['total_s']:.1f} s)")


if __name__ == "__main__":
    main()
