"""The peers' caches (diffusers' hooks) on a Latte checkpoint folder, for `videosys bench --peers`.

diffusers' LattePipeline loads our Latte folders (the demo model included) as they are. A variant is one of
diffusers' cache hooks enabled on its LatteTransformer3DModel:

- `taylorseer-<N>`: TaylorSeerCacheConfig(cache_interval=N, max_order=1, fp32 factors) on every block's
  attn1 / attn2 / ff (diffusers' default patterns match none of Latte's modules: nothing would be cached);
- `taylorseer-lite-<N>`: its lite mode (predefined patterns: it forecasts the last layer's output);
- `fastercache`: FasterCacheConfig with diffusers' documented defaults;
- `pab-<s><t><c>`: PyramidAttentionBroadcastConfig with Latte's published window (100, 800) and block names
  anchored (its default patterns give temporal attention the spatial range);
- `fbcache-<threshold>`: FirstBlockCacheConfig (its block list mixes Latte's spatial and temporal blocks).

LattePipeline opens no cache context, so every call runs inside one (`transformer.cache_context`), as the
hooks need. First written as scripts/bench_peers.py (still there); here so the bench draws ours and theirs together.
"""

import time

import numpy as np
import torch

VARIANTS = ("taylorseer-2", "taylorseer-3", "taylorseer-5", "taylorseer-lite-3", "taylorseer-lite-5",
            "fastercache", "pab-246", "fbcache-0.05")
LATTE_MODULES = [r"transformer_blocks\.\d+\.(attn1|attn2|ff)", r"temporal_transformer_blocks\.\d+\.(attn1|ff)"]
PREFIX = "diffusers:"  # a peer variant's name in the bench's results


def method_of(variant: str) -> str:
    """The peer method of a variant ("taylorseer-lite-3" -> "taylorseer-lite"): one line in the plot."""
    return variant if variant in ("none", "fastercache") else variant.rsplit("-", 1)[0]


def cache_config(variant: str, pipe=None):
    """The diffusers cache config a variant name stands for (None: no cache). pipe=None only checks the name."""
    import diffusers

    timestep = lambda: pipe.current_timestep  # noqa: E731  (read when the hook runs)
    try:
        if variant == "none":
            return None
        if variant.startswith("taylorseer-"):
            lite = variant.startswith("taylorseer-lite-")
            interval = int(variant.rsplit("-", 1)[1])
            return diffusers.TaylorSeerCacheConfig(cache_interval=interval, max_order=1,
                                                   taylor_factors_dtype=torch.float32,
                                                   cache_identifiers=None if lite else LATTE_MODULES,
                                                   use_lite_mode=lite)
        if variant == "fastercache":
            return diffusers.FasterCacheConfig(current_timestep_callback=timestep)
        if variant.startswith("pab-") and len(variant) == 7:
            s, t, c = (int(x) for x in variant[4:])
            window = (100, 800)  # Latte's published PAB window (PAB, arXiv 2408.12588; docs/caches/pab.md)
            return diffusers.PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=s, temporal_attention_block_skip_range=t,
                cross_attention_block_skip_range=c, spatial_attention_timestep_skip_range=window,
                temporal_attention_timestep_skip_range=window, cross_attention_timestep_skip_range=window,
                spatial_attention_block_identifiers=[r"^transformer_blocks"],
                temporal_attention_block_identifiers=[r"^temporal_transformer_blocks"],
                cross_attention_block_identifiers=[r"^transformer_blocks"], current_timestep_callback=timestep)
        if variant.startswith("fbcache-"):
            return diffusers.FirstBlockCacheConfig(threshold=float(variant.split("-", 1)[1]))
    except ValueError:
        pass
    raise ValueError(f"unknown peer variant {variant!r}; choose from {', '.join(VARIANTS)} (any interval / threshold)")


class DiffusersRunner:
    """diffusers' LattePipeline on a checkpoint folder, with one of its caches at a time, generating with
    our config's frames, size, steps and guidance."""

    def __init__(self, path: str, config):
        from diffusers import LattePipeline

        self.pipe = LattePipeline.from_pretrained(path, torch_dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        frames = self.pipe.transformer.config.video_length  # diffusers' Latte: a fixed temporal position table
        if config.num_frames != frames:
            raise ValueError(f"diffusers' Latte generates exactly {frames} frames with this checkpoint; "
                             f"got num_frames={config.num_frames} (--peers needs the checkpoint's frame count)")
        self.config = config
        self.spent = 0.0  # transformer seconds of the last generation
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

    def generate(self, prompt: str, seed: int) -> tuple[np.ndarray, float, dict]:
        """(T, H, W, 3) uint8, the wall seconds of the call, and no statistics (diffusers keeps none)."""
        c = self.config
        self.spent = 0.0
        start = time.perf_counter()
        with self.pipe.transformer.cache_context("batch"):
            frames = self.pipe(prompt, num_inference_steps=c.num_inference_steps, video_length=c.num_frames,
                               height=c.height, width=c.width, guidance_scale=c.guidance_scale,
                               generator=torch.Generator().manual_seed(seed), output_type="np",
                               clean_caption=False).frames[0]
        if self.pipe.transformer.is_cache_enabled:
            self.pipe.transformer._reset_stateful_cache()
        seconds = time.perf_counter() - start
        return (np.asarray(frames) * 255).round().clip(0, 255).astype(np.uint8), seconds, {}
