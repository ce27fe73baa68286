"""What the benchmark scripts share: the model options, the config they name, the prompt sets.

scripts/bench_cache.py and scripts/calibrate_teacache.py take the same `--model --preset --model-path
--device --prompt-set --prompts --seeds --steps --threads`.
"""

import sys

import torch

from videosys.eval import demo
from videosys.models import config_class

BUILTIN_PROMPTS = ("a red circle moving to the right", "a blue square moving up on a plain white background",
                   "a dog running on the beach at sunset")


def add_model_args(parser) -> None:
    """The model, its prompts and the CPU threads: the options this script shares with calibrate_teacache.py."""
    parser.add_argument("--model", default="latte")
    parser.add_argument("--preset", default="demo", help="demo (trained, Latte only), tiny (random weights), ...")
    parser.add_argument("--model-path")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt-set", choices=("demo", "builtin"), default="demo",
                        help="demo: eval_demo's 24 prompts, scored by its tracker; builtin: a few generic prompts")
    parser.add_argument("--prompt-file", help="one prompt a line (replaces --prompt-set; no prompt accuracy)")
    parser.add_argument("--prompts", type=int, help="only the first N prompts of the set")
    parser.add_argument("--seeds", type=int, default=1, help="videos per prompt")
    parser.add_argument("--steps", type=int, help="override the number of denoising steps")
    for name in ("num-frames", "height", "width"):
        parser.add_argument("--" + name, type=int, help="override the config's (default: the preset's)")
    parser.add_argument("--threads", type=int, help="torch threads on CPU (default: torch's choice)")


def model_config(args):
    """The family config the options name (progress bar off); sets the torch threads."""
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"device": args.device, "progress_bar": False, "preset": args.preset}
    if args.model_path:
        overrides["model_path"] = args.model_path
    if args.steps:
        overrides["num_inference_steps"] = args.steps
    for name in ("num_frames", "height", "width"):
        if getattr(args, name, None):
            overrides[name] = getattr(args, name)
    return config_class(args.model)(**overrides)


def spread_over(prompts: list[str], count: int) -> list[str]:
    """`count` of the prompts, evenly spread over the list (the demo set's colours and directions all come up)."""
    return [prompts[i * len(prompts) // count] for i in range(count)]


def prompt_list(args, spread: bool = False) -> list[str]:
    """The set's first --prompts prompts, or with `spread` --prompts of them spread over the whole set."""
    if getattr(args, "prompt_file", None):
        from videosys.utils.files import read_text

        prompts = [line.strip() for line in read_text(args.prompt_file, "--prompt-file").splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"no prompts in {args.prompt_file!r}")
    else:
        prompts = demo.prompt_set() if args.prompt_set == "demo" else list(BUILTIN_PROMPTS)
    if spread and args.prompts:
        return spread_over(prompts, min(args.prompts, len(prompts)))
    return prompts[: args.prompts]


def run_reporting_errors(prog: str, run, args) -> int:
    """run(args) for a command-line entry point: a bad input said in one line (exit status 2), no traceback."""
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
