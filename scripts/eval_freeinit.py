"""FreeInit on the demo model: temporal consistency, prompt accuracy and cost, with and without it.

    python scripts/eval_freeinit.py --threads 2                       # the 24 demo prompts, seed 0
    python scripts/eval_freeinit.py --prompts 4 --variants plain freeinit-2

Variants: `plain`; `freeinit-<N>` (N sampling runs, diffusers' defaults: butterworth, d_s = d_t = 0.25);
`freeinit-<N>-fast` (coarse-to-fine step counts); `+<cache>` after any of them turns a cache on, and with
FreeInit `@<k>` keeps it on only in the first k runs (`freeinit-3+teacache-fast@2`). Per variant: the demo
tracker's accuracy, the object's track straightness (RMS px off its line) and colour stability (std of its
mean colour over frames), VBench's temporal flickering score, and seconds per video. Prints a table, writes JSON.
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from videosys import LatteConfig, VideoSysEngine
from videosys.eval import temporal
from videosys.eval.demo import prompt_set, row, score
from videosys.utils import demo_data
from videosys.utils.files import write_json

VARIANTS = ("plain", "freeinit-2", "freeinit-3", "freeinit-3-fast", "plain+teacache-fast",
            "freeinit-3+teacache-fast", "freeinit-3+teacache-fast@1")


def variant_fields(variant: str) -> dict:
    """Config fields of a variant name (see the module docstring)."""
    sampler, _, cache = variant.partition("+")
    fields = {}
    if cache:
        cache, _, cache_iters = cache.partition("@")
        fields["cache"] = cache
        if cache_iters:
            fields["freeinit_cache_iters"] = int(cache_iters)
    if sampler != "plain":
        parts = sampler.split("-")
        if parts[0] != "freeinit" or len(parts) not in (2, 3) or not parts[1].isdigit() or parts[2:] not in ([], ["fast"]):
            raise ValueError(f"unknown variant {variant!r}: plain or freeinit-<N>[-fast], then +<cache>[@<k>]")
        fields.update(freeinit_iters=int(parts[1]), freeinit_fast_sampling=parts[2:] == ["fast"])
    return fields


def measure(video: np.ndarray, prompt: str) -> dict:
    colour = demo_data.parse_caption(prompt)[0]
    return {"straightness_px": temporal.straightness(video, colour),
            "colour_std": temporal.colour_stability(video, colour),
            "flickering": temporal.temporal_flickering(video)}


def transformer_calls(stats: dict) -> int:
    """Steps that ran the block stack: every step, less those a step cache (TeaCache) reused, over every run."""
    runs = stats["freeinit"]["runs"] if "freeinit" in stats else [stats]
    return sum(r["steps"] - r.get("teacache", {}).get("reused_steps", 0) for r in runs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--prompts", type=int, help="only the first N of the 24 demo prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output", default="outputs/eval_freeinit.json")
    args = parser.parse_args(argv)
    fields = {v: variant_fields(v) for v in args.variants}  # bad names fail before any generation
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = prompt_set()[: args.prompts]
    engines = {v: VideoSysEngine(LatteConfig(preset="demo", progress_bar=False, **fields[v])) for v in args.variants}
    rows = {v: [] for v in args.variants}
    metrics, seconds, calls = ({v: [] for v in args.variants} for _ in range(3))
    for k, prompt in enumerate(prompts):  # every variant per prompt, order rotated: machine drift hits all alike
        order = args.variants[k % len(args.variants):] + args.variants[: k % len(args.variants)]
        for variant in order:
            start = time.perf_counter()
            out = engines[variant].generate(prompt, seed=args.seed)
            seconds[variant].append(time.perf_counter() - start)
            video = out.video[0].numpy()
            rows[variant].append(row(prompt, prompt, video))
            metrics[variant].append(measure(video, prompt))
            calls[variant].append(transformer_calls(out.stats))
    results = {}
    for variant in args.variants:
        summary = {name: float(np.nanmean([m[name] for m in metrics[variant]])) for name in metrics[variant][0]}
        results[variant] = {"accuracy": score(rows[variant])["both"], **summary,
                            "seconds": statistics.median(seconds[variant]),
                            "transformer_calls": statistics.mean(calls[variant]), "fields": fields[variant]}
    base = results.get("plain", next(iter(results.values())))
    print(f"demo model, {len(prompts)} prompts, seed {args.seed}, {torch.get_num_threads()} threads; "
          "cost = transformer calls (steps that ran the block stack) relative to plain; seconds: medians")
    print(f"{'variant':<30}{'accuracy':>9}{'straight px':>12}{'colour std':>11}{'flicker':>9}{'calls':>7}"
          f"{'cost':>7}{'s/video':>9}")
    for variant, r in results.items():
        print(f"{variant:<30}{r['accuracy']:>9.3f}{r['straightness_px']:>12.3f}{r['colour_std']:>11.2f}"
              f"{r['flickering']:>9.4f}{r['transformer_calls']:>7.1f}{r['transformer_calls'] / base['transformer_calls']:>6.2f}x"
              f"{r['seconds']:>9.3f}")
    write_json(args.output, {"prompts": prompts, "seed": args.seed, "threads": torch.get_num_threads(),
                             "results": results})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
