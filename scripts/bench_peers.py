"""The peers' caches on our demo model, measured the way bench_cache measures ours.

    python scripts/bench_peers.py --threads 2                   # diffusers' hooks on videosys/assets/demo-latte
    python scripts/bench_peers.py --variants none taylorseer-2 taylorseer-lite-3 --prompts 4

diffusers' LattePipeline loads the shipped demo model folder as it is. Each variant is one of
diffusers' cache hooks enabled on its LatteTransformer3DModel; PSNR / SSIM / LPIPS are against
diffusers' own uncached video of the same prompt and seed, times are medians of interleaved rounds
(every variant once per round, order rotated). Variants:

- `taylorseer-<N>`: TaylorSeerCacheConfig(cache_interval=N, max_order=1, fp32 factors) on every block's
  attn1 / attn2 / ff (diffusers' default patterns match none of Latte's modules: nothing would be cached);
- `taylorseer-lite-<N>`: its lite mode (predefined patterns);
- `fastercache`: FasterCacheConfig with diffusers' documented defaults;
- `pab-<s><t><c>`: PyramidAttentionBroadcastConfig with Latte's published window (100, 800) and block names
  anchored (its default patterns give temporal attention the spatial range);
- `fbcache-<threshold>`: FirstBlockCacheConfig (its block list mixes Latte's spatial and temporal blocks).

LattePipeline opens no cache context, so every call runs inside one (`transformer.cache_context`), as the
hooks need. Prints a table and writes JSON.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_cache  # noqa: E402  (scripts/bench_cache.py: prompts, metrics)
import eval_demo  # noqa: E402

from videosys.models.latte.pipeline import DEMO_PATH  # noqa: E402
from videosys.utils.files import write_json  # noqa: E402

VARIANTS = ("none", "taylorseer-2", "taylorseer-3", "taylorseer-5", "taylorseer-lite-3", "taylorseer-lite-5",
            "fastercache", "pab-246", "fbcache-0.05")
LATTE_MODULES = [r"transformer_blocks\.\d+\.(attn1|attn2|ff)", r"temporal_transformer_blocks\.\d+\.(attn1|ff)"]


def cache_config(variant: str, pipe):
    """The diffusers cache config a variant name stands for (None: no cache)."""
    import diffusers

    if variant == "none":
        return None
    if variant.startswith("taylorseer-"):
        lite = variant.startswith("taylorseer-lite-")
        interval = int(variant.rsplit("-", 1)[1])
        return diffusers.TaylorSeerCacheConfig(cache_interval=interval, max_order=1, taylor_factors_dtype=torch.float32,
                                               cache_identifiers=None if lite else LATTE_MODULES, use_lite_mode=lite)
    if variant == "fastercache":
        return diffusers.FasterCacheConfig(current_timestep_callback=lambda: pipe.current_timestep)
    if variant.startswith("pab-"):
        s, t, c = (int(x) for x in variant[4:])
        window = (100, 800)  # Latte's published PAB window (reference/acceleration.md)
        return diffusers.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=s, temporal_attention_block_skip_range=t,
            cross_attention_block_skip_range=c, spatial_attention_timestep_skip_range=window,
            temporal_attention_timestep_skip_range=window, cross_attention_timestep_skip_range=window,
            spatial_attention_block_identifiers=[r"^transformer_blocks"],
            temporal_attention_block_identifiers=[r"^temporal_transformer_blocks"],
            cross_attention_block_identifiers=[r"^transformer_blocks"],
            current_timestep_callback=lambda: pipe.current_timestep)
    if variant.startswith("fbcache-"):
        return diffusers.FirstBlockCacheConfig(threshold=float(variant.split("-", 1)[1]))
    raise ValueError(f"unknown peer variant {variant!r}; choose from {VARIANTS} (any interval / threshold)")


class DiffusersRunner:
    """diffusers' LattePipeline on a checkpoint folder, with one of its caches at a time."""

    def __init__(self, path: str, steps: int):
        from diffusers import LattePipeline

        self.pipe = LattePipeline.from_pretrained(path, torch_dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps = steps
        self.spent = 0.0
        forward = self.pipe.transformer.forward

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            self.spent += time.perf_counter() - start
            return out

        self.pipe.transformer.forward = timed

    def set_cache(self, variant: str) -> None:
        transformer = self.pipe.transformer
        if transformer.is_cache_enabled:
            transformer.disable_cache()
        config = cache_config(variant, self.pipe)
        if config is not None:
            transformer.enable_cache(config)

    def generate(self, prompt: str, seed: int) -> tuple[np.ndarray, float]:
        """(T, H, W, 3) uint8 and the wall seconds of the call."""
        self.spent = 0.0
        start = time.perf_counter()
        with self.pipe.transformer.cache_context("batch"):
            frames = self.pipe(prompt, num_inference_steps=self.steps, video_length=16, height=64, width=64,
                               guidance_scale=7.5, generator=torch.Generator().manual_seed(seed),
                               output_type="np", clean_caption=False).frames[0]
        if self.pipe.transformer.is_cache_enabled:
            self.pipe.transformer._reset_stateful_cache()
        return (np.asarray(frames) * 255).round().clip(0, 255).astype(np.uint8), time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default=DEMO_PATH)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--prompts", type=int, help="only the first N demo prompts")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output", default="outputs/bench_peers.json")
    args = parser.parse_args(argv)
    if "none" not in args.variants:
        parser.error("--variants must include none (the baseline)")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = ["none"] + [v for v in args.variants if v != "none"]
    runner = DiffusersRunner(args.model_path, args.steps)
    for v in variants:
        cache_config(v, runner.pipe)  # a bad name fails before any generation
    jobs = [(p, 0) for p in eval_demo.prompt_set()[: args.prompts]]
    lpips = bench_cache.lpips_model_or_none(torch.device("cpu"))

    times = {v: [] for v in variants}
    for r in range(args.repeats + 1):  # round 0 warms up
        prompt, seed = jobs[r % len(jobs)]
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            runner.set_cache(v)
            _, seconds = runner.generate(prompt, seed)
            if r:
                times[v].append((seconds, runner.spent))

    results, baseline = {}, None
    for v in variants:
        runner.set_cache(v)
        videos = [runner.generate(p, s)[0] for p, s in jobs]
        row = {"total_s": statistics.median(t for t, _ in times[v]),
               "transformer_s": statistics.median(t for _, t in times[v])}
        if baseline is None:
            baseline = videos
        else:
            row.update(bench_cache.fidelity(baseline, videos, lpips, torch.device("cpu")))
        rows = [eval_demo.row(f"{p}-{s}", p, video) for (p, s), video in zip(jobs, videos)]
        row["accuracy"] = eval_demo.score(rows)["both"]
        results[v] = row
        print(f"{v}: {row['total_s']:.3f} s/video", flush=True)
    for row in results.values():
        row["speedup"] = results["none"]["total_s"] / row["total_s"]
        row["teacache"] = {}
    print(f"diffusers LattePipeline on {args.model_path}, {args.steps} steps, {len(jobs)} videos per variant, "
          f"times: median of {args.repeats} interleaved rounds")
    print(bench_cache.table(results, lpips is not None, True))
    write_json(args.output, {"framework": "diffusers", "model_path": args.model_path, "steps": args.steps,
                             "prompts": [p for p, _ in jobs], "repeats": args.repeats,
                             "threads": torch.get_num_threads(), "results": results})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
