"""The peers' caches on our checkpoint folders, for `videosys bench --peers`: diffusers' hooks (Latte, Wan) and
cache-dit's DBCache (Wan).

diffusers' LattePipeline loads our Latte folders (the demo included) and its WanPipeline our Wan folders (the demo
Wan included) as they are. A variant is one cache configured as its documentation says; a name with a number
takes the setting the number gives:

- `taylorseer-<N>`: TaylorSeerCacheConfig(cache_interval=N, max_order=1, fp32 factors) on every block's attention
  and feed-forward (diffusers' default patterns end in "attn", which `re.fullmatch` never matches on Latte's or
  Wan's attn1 / attn2: the default caches nothing; `taylorseer-default-<N>` runs it as it ships);
- `taylorseer-lite-<N>`: its lite mode (predefined patterns: it forecasts the last layer's output);
- `fastercache`: FasterCacheConfig with diffusers' documented defaults;
- `pab-<s><t><c>` (Latte: Latte's published window (100, 800), block names anchored: its default patterns give
  temporal attention the spatial range) / `pab-<s>` (Wan: self-attention skip range s, diffusers' defaults else);
- `fbcache-<threshold>`: FirstBlockCacheConfig;
- `magcache-<threshold>` (Wan): MagCacheConfig with ratios from its own calibration mode (`calibrate=True`, one
  uncached generation of the bench's first prompt at seed 0; the cond pass's printed list, as its docs say to
  copy), max_skip_steps and retention_ratio at their defaults;
- `dbcache-F<f>B<b>-<threshold>[-ts]` (Wan, cache-dit): DBCacheConfig(Fn_compute_blocks=f, Bn_compute_blocks=b,
  residual_diff_threshold=threshold), `-ts` with its TaylorSeer calibrator (order 1), everything else cache-dit's
  defaults. cache-dit refuses F8B0 on a model with 8 blocks or fewer (the demo Wan has 4): the bench reports
  such a variant as failed.

LattePipeline opens no cache context, so every call runs inside one (`transformer.cache_context`), as the hooks
need; WanPipeline opens its own ("cond", "uncond").
"""

import ast
import contextlib
import io
import re
import time

import numpy as np
import torch

from videosys.eval.work import ForwardMeter

VARIANTS = {
    "latte": ("taylorseer-2", "taylorseer-3", "taylorseer-5", "taylorseer-lite-3", "taylorseer-lite-5",
              "fastercache", "pab-246", "fbcache-0.05"),
    "wan": ("taylorseer-2", "taylorseer-3", "taylorseer-4", "taylorseer-lite-2", "taylorseer-lite-3",
            "taylorseer-lite-4", "taylorseer-default-3", "fastercache", "pab-2", "pab-3", "fbcache-0.05",
            "fbcache-0.1", "fbcache-0.2", "magcache-0.06", "magcache-0.12", "magcache-0.24",
            "dbcache-F1B0-0.08", "dbcache-F1B0-0.12", "dbcache-F1B0-0.2", "dbcache-F1B0-0.08-ts",
            "dbcache-F1B0-0.12-ts", "dbcache-F1B0-0.2-ts", "dbcache-F8B0-0.08"),
}
MODULES = {  # every block's attention and feed-forward, for TaylorSeer's cache_identifiers
    "latte": [r"transformer_blocks\.\d+\.(attn1|attn2|ff)", r"temporal_transformer_blocks\.\d+\.(attn1|ff)"],
    "wan": [r"blocks\.\d+\.(attn1|attn2|ffn)"],
}
PREFIXES = {"diffusers": "diffusers:", "cache-dit": "cache-dit:"}  # a peer variant's name in the bench's results
PREFIX = PREFIXES["diffusers"]
DBCACHE = re.compile(r"dbcache-F(\d+)B(\d+)-([0-9.]+)(-ts)?")


def framework_of(variant: str) -> str:
    return "cache-dit" if variant.startswith("dbcache-") else "diffusers"


def named(variant: str) -> str:
    """The variant's name in the bench's results ("diffusers:fbcache-0.05", "cache-dit:dbcache-F1B0-0.08")."""
    return PREFIXES[framework_of(variant)] + variant


def method_of(variant: str) -> str:
    """The peer method of a variant ("taylorseer-lite-3" -> "taylorseer-lite", "dbcache-F1B0-0.08-ts" ->
    "dbcache-F1B0-ts"): one line in the plot."""
    match = DBCACHE.fullmatch(variant)
    if match:
        return f"dbcache-F{match[1]}B{match[2]}" + (match[4] or "")
    return variant if variant in ("none", "fastercache") else variant.rsplit("-", 1)[0]


def _number(text: str, kind=float):
    value = kind(text)
    if not np.isfinite(value) or value <= 0:
        raise ValueError
    return value


def cache_config(variant: str, pipe=None, model: str = "latte", mag_ratios=None):
    """The diffusers cache config a variant name stands for (None: no cache; cache-dit's variants: their
    (DBCacheConfig, calibrator config or None)). pipe=None only checks the name."""
    import diffusers

    timestep = lambda: pipe.current_timestep  # noqa: E731  (read when the hook runs)
    try:
        if variant == "none":
            return None
        if variant.startswith("taylorseer-"):
            lite, default = variant.startswith("taylorseer-lite-"), variant.startswith("taylorseer-default-")
            interval = _number(variant.rsplit("-", 1)[1], int)
            return diffusers.TaylorSeerCacheConfig(cache_interval=interval, max_order=1,
                                                   taylor_factors_dtype=torch.float32,
                                                   cache_identifiers=None if lite or default else MODULES[model],
                                                   use_lite_mode=lite)
        if variant == "fastercache":
            return diffusers.FasterCacheConfig(current_timestep_callback=timestep)
        if variant.startswith("pab-") and model == "latte" and len(variant) == 7:
            s, t, c = (int(x) for x in variant[4:])
            window = (100, 800)  # Latte's published PAB window (PAB, arXiv 2408.12588; docs/caches/pab.md)
            return diffusers.PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=s, temporal_attention_block_skip_range=t,
                cross_attention_block_skip_range=c, spatial_attention_timestep_skip_range=window,
                temporal_attention_timestep_skip_range=window, cross_attention_timestep_skip_range=window,
                spatial_attention_block_identifiers=[r"^transformer_blocks"],
                temporal_attention_block_identifiers=[r"^temporal_transformer_blocks"],
                cross_attention_block_identifiers=[r"^transformer_blocks"], current_timestep_callback=timestep)
        if variant.startswith("pab-") and model == "wan":
            return diffusers.PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=_number(variant[4:], int), current_timestep_callback=timestep)
        if variant.startswith("fbcache-"):
            return diffusers.FirstBlockCacheConfig(threshold=_number(variant.split("-", 1)[1]))
        if variant.startswith("magcache-") and model == "wan":
            threshold = _number(variant.split("-", 1)[1])
            steps = pipe.steps if pipe is not None else 50
            return diffusers.MagCacheConfig(threshold=threshold, num_inference_steps=steps,
                                            mag_ratios=[1.0] * steps if mag_ratios is None else mag_ratios)
        match = DBCACHE.fullmatch(variant)
        if match and model == "wan":
            cache_dit = _cache_dit()
            calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if match[4] else None
            return (cache_dit.DBCacheConfig(Fn_compute_blocks=int(match[1]), Bn_compute_blocks=int(match[2]),
                                            residual_diff_threshold=_number(match[3])), calibrator)
    except ImportError as err:
        raise ValueError(f"peer variant {variant!r} needs cache-dit: pip install -e \".[peers]\" ({err})") from None
    except ValueError:
        pass
    raise ValueError(f"unknown peer variant {variant!r} for {model}; choose from {', '.join(VARIANTS[model])} "
                     "(any interval / threshold)")


def _cache_dit():
    """cache-dit, its log lines (several per call, to stdout) off: its level is read from the environment at import."""
    import os

    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "ERROR")
    import cache_dit

    return cache_dit


def folder_of(config) -> str | None:
    """The checkpoint diffusers loads: Latte's folder (its demo's included), a Wan config's model_path."""
    return config.checkpoint() if config.model_name == "latte" else config.model_path


def load_wan(path: str):
    """diffusers.WanPipeline.from_pretrained(path); without accelerate (which diffusers' loader needs for Wan's
    fp32-kept modules) its transformer is built from the folder's config and weights and handed in."""
    import diffusers
    from diffusers.utils import is_accelerate_available

    if is_accelerate_available():
        return diffusers.WanPipeline.from_pretrained(path, torch_dtype=torch.float32)
    import json
    import os

    from videosys.utils.hub import read_state_dict

    folder = os.path.join(path, "transformer")
    with open(os.path.join(folder, "config.json")) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    transformer = diffusers.WanTransformer3DModel(**config).eval()
    transformer.load_state_dict(read_state_dict(folder), strict=True)
    return diffusers.WanPipeline.from_pretrained(path, transformer=transformer, torch_dtype=torch.float32)


class DiffusersRunner:
    """diffusers' pipeline (LattePipeline or WanPipeline) on a checkpoint folder, one of its caches at a time
    (cache-dit's too: `framework="cache-dit"`, Wan only, on its own pipeline), generating with our config's
    frames, size, steps, guidance and negative prompt; `meter` counts the transformer's seconds and FLOPs."""

    def __init__(self, path: str, config, model: str = "latte", framework: str = "diffusers", calibration_job=None):
        self.model, self.framework, self.config = model, framework, config
        if model == "wan":
            self.pipe = load_wan(path)
        else:
            from diffusers import LattePipeline

            self.pipe = LattePipeline.from_pretrained(path, torch_dtype=torch.float32)
            frames = self.pipe.transformer.config.video_length  # diffusers' Latte: a fixed temporal position table
            if config.num_frames != frames:
                raise ValueError(f"diffusers' Latte generates exactly {frames} frames with this checkpoint; "
                                 f"got num_frames={config.num_frames} (--peers needs the checkpoint's frame count)")
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.steps = config.num_inference_steps  # read by MagCache's config
        self.meter = ForwardMeter(self.pipe.transformer)
        self.calibration_job = calibration_job or ("a red circle moving to the right", 0)
        self.mag_ratios = None
        self.enabled = False

    @property
    def spent(self) -> float:
        return self.meter.spent

    def _disable(self) -> None:
        if not self.enabled:
            return
        if self.framework == "cache-dit":
            _cache_dit().disable_cache(self.pipe)
        else:
            self.pipe.transformer.disable_cache()
        self.enabled = False

    def calibrate_magcache(self) -> list[float]:
        """MagCache's own calibration: one generation with calibrate=True; the first printed list (cond)."""
        import diffusers

        self._disable()
        self.pipe.transformer.enable_cache(diffusers.MagCacheConfig(calibrate=True,
                                                                    num_inference_steps=self.pipe.steps))
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                self._call(*self.calibration_job)
        finally:
            self.pipe.transformer.disable_cache()
        lines = printed.getvalue().splitlines()
        lists = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "Calibration Complete" in line]
        if not lists:
            raise RuntimeError("diffusers' MagCache calibration printed no ratios")
        return [float(x) for x in ast.literal_eval(lists[0].strip())]

    def set_cache(self, variant: str) -> None:
        self._disable()
        if variant.startswith("magcache-") and self.mag_ratios is None:
            self.mag_ratios = self.calibrate_magcache()
        config = cache_config(variant, self.pipe, self.model, self.mag_ratios)
        if config is None:
            return
        if self.framework == "cache-dit":
            cache_config_, calibrator = config
            extra = {"calibrator_config": calibrator} if calibrator is not None else {}
            _cache_dit().enable_cache(self.pipe, cache_config=cache_config_, **extra)
        else:
            self.pipe.transformer.enable_cache(config)
        self.enabled = True

    def _call(self, prompt: str, seed: int):
        c = self.config
        common = dict(num_inference_steps=c.num_inference_steps, height=c.height, width=c.width,
                      guidance_scale=c.guidance_scale, generator=torch.Generator().manual_seed(seed), output_type="np")
        if self.model == "wan":
            return self.pipe(prompt, negative_prompt=c.default_negative_prompt(), num_frames=c.num_frames,
                             **common).frames[0]
        with self.pipe.transformer.cache_context("batch"):
            return self.pipe(prompt, video_length=c.num_frames, clean_caption=False, **common).frames[0]

    def generate(self, prompt: str, seed: int) -> tuple[np.ndarray, float, dict]:
        """(T, H, W, 3) uint8, the wall seconds of the call, and no statistics (the peers keep none we read)."""
        self.meter.reset()
        start = time.perf_counter()
        frames = self._call(prompt, seed)
        if self.framework == "diffusers" and self.pipe.transformer.is_cache_enabled:
            self.pipe.transformer._reset_stateful_cache()
        seconds = time.perf_counter() - start
        return (np.asarray(frames) * 255).round().clip(0, 255).astype(np.uint8), seconds, {}
