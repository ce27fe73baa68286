"""Does a generated video show what its prompt asked for? Colour of the moving object and direction of motion.

    python scripts/eval_demo.py --demo --seeds 2                      # the shipped demo model (LatteConfig preset "demo")
    python scripts/eval_demo.py --demo demo-skip --threads 1          # its Skip-DiT fine-tune (preset "demo-skip")
    python scripts/eval_demo.py --model wan --demo --seeds 3          # the shipped demo Wan (WanConfig preset "demo")
    python scripts/eval_demo.py --model wan --model-path demo-wan     # a folder train_demo.py --family wan wrote
    python scripts/eval_demo.py --videos samples/                    # mp4s named by their prompt
    python scripts/eval_demo.py --model-path demo-latte --seeds 2     # generate the fixed prompt set, then score
    python scripts/eval_demo.py --model-path demo-latte --cache teacache-fast --save-dir samples/
    python scripts/eval_demo.py --procedural                          # the tracker on the training clips (its ceiling)
    python scripts/eval_demo.py --demo --quantize int8 --threads 1    # the demo with weight-only int8 (docs/memory.md)

A colour-centroid tracker: each pixel is labelled with the nearest of the demo palette's
colours or the frame's background (the median of its border pixels), and a pixel too far
from all of them is left unlabelled. The video's colour is the palette colour with the most
pixels over all frames; its direction is the dominant axis and sign of the least-squares
slope of that colour's centroid over time. Prompts are the demo captions
(videosys/utils/demo_data.py); a file name is parsed as one ("a red circle moving up-0.mp4").
Prints colour / direction / both accuracy and writes JSON.
"""

import argparse
import os
import sys

from videosys.eval.demo import prompt_set, row, rows_from_folder, score
from videosys.utils import demo_data
from videosys.utils.files import write_json


def rows_from_engine(args) -> list[dict]:
    from videosys import VideoSysEngine
    from videosys.models import config_class

    config = config_class(args.model)(model_path=args.model_path, preset=args.preset, cache=args.cache,
                                      progress_bar=False, num_gpus=args.num_gpus, quantize=args.quantize)
    engine = VideoSysEngine(config)
    out = []
    try:
        for prompt in prompt_set()[: args.limit]:
            for seed in range(args.seeds):
                kw = {"num_inference_steps": args.num_inference_steps} if args.num_inference_steps else {}
                video = engine.generate(prompt, seed=seed, **kw).video[0]
                name = f"{prompt}-{seed}.mp4"
                if args.save_dir:
                    engine.save_video(video, os.path.join(args.save_dir, name))
                out.append(row(name, prompt, video.numpy()))
    finally:
        engine.shutdown()
    return out


def rows_procedural(args) -> list[dict]:
    data = demo_data.DemoClips(num_frames=16, height=64, width=64, seed=args.data_seed)
    out = []
    for seed in range(args.seeds):
        for i in range(len(data)):
            clip, text, _ = data.item(seed * len(data) + i)
            out.append(row(f"{text}-{seed}", text, clip))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="folder of mp4s named by their prompt")
    source.add_argument("--model-path", help="checkpoint folder to generate the fixed prompt set with")
    source.add_argument("--demo", nargs="?", const="demo", choices=("demo", "demo-skip"),
                        help="generate with a shipped demo model: its preset, demo (default) or demo-skip")
    source.add_argument("--random-weights", action="store_true", help="generate with the random `tiny` preset")
    source.add_argument("--procedural", action="store_true", help="score the procedural training clips")
    parser.add_argument("--model", default="latte")
    parser.add_argument("--preset", default=None,
                        help="sizes and defaults for --model-path (default: latte tiny, wan demo: the demo's 17x64x64 "
                             "and its empty negative prompt)")
    parser.add_argument("--cache", default=None, help="a registered cache name (teacache-slow, pab, none, ...)")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--quantize", default="none", help="weight quantization: none, int8 or fp8 (docs/memory.md)")
    parser.add_argument("--num-inference-steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=1, help="videos per prompt")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts of the fixed set")
    parser.add_argument("--data-seed", type=int, default=0, help="--procedural: the dataset seed")
    parser.add_argument("--save-dir", default=None, help="also write the generated mp4s here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads on CPU (default: torch's; 1 on a busy machine, see train_demo.py)")
    parser.add_argument("--output", default="outputs/eval_demo.json")
    args = parser.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.demo:
        if args.model == "wan" and args.demo != "demo":
            parser.error("--model wan has one trained demo: --demo (preset demo)")
        args.preset = args.demo
    elif args.preset is None:
        args.preset = "demo" if args.model == "wan" else "tiny"
    if args.videos:
        rows = rows_from_folder(args.videos)
    elif args.procedural:
        rows = rows_procedural(args)
    else:
        rows = rows_from_engine(args)
    accuracy = score(rows)
    print(f"{'videos':>8} {'colour':>8} {'direction':>10} {'both':>8}")
    print(f"{accuracy['n']:>8d} {accuracy['colour']:>8.3f} {accuracy['direction']:>10.3f} {accuracy['both']:>8.3f}")
    write_json(args.output, {"accuracy": accuracy, "args": vars(args), "videos": rows})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
