"""What LaVie's later stages share as plug-ins of the cascade (pipeline.STAGE_PIPELINES): each is its own small
pipeline (VideoSysPipeline: the shared denoising loop, so the caches' hook points and CFG parallelism act on its UNet)
built beside the base pipeline by `from_config(config, base)`, and `refine(out, run)` takes the previous stage's
output to its own."""

import time
from numbers import Number

import torch
import torch.distributed as dist

from videosys.cache.registry import method_of
from videosys.core.pipeline import VideoSysOutput


def refuse_fitted(configs: list, stage: str) -> None:
    """A method fitted per model (TeaCache's polynomial, MagCache's ratios) is refused on a later stage: the config's
    numbers are the base UNet's, and the stage's UNet is another model."""
    fitted = [method_of(c).name for c in configs if method_of(c).needs]
    if fitted:
        raise ValueError(f"{', '.join(fitted)} runs on numbers fitted for one model, and LaVie's {stage} stage has "
                         "none of its own (the config's are the base UNet's): use stages=('base',) with it, or a "
                         "method without fitted numbers (deepcache, forecast, taylorseer, fbcache)")


class CascadeStage:
    """Mixin for a later stage's pipeline class: `name` is its entry in config.stages; `run_stage(video, run)` returns
    its clean latents, `decode(latents)` its video."""

    name = ""
    stage_steps = 0  # model steps of the last run_stage (VSR: every chunk's)

    def attach(self, base) -> None:
        """Beside `base`: the configured caches on this stage's UNet too (each stage counts its own)."""
        self.base = base
        self.enable_configured_caches()

    def enable_configured_caches(self) -> None:
        self.set_cache(self.config.cache_configs())

    def set_cache(self, cache) -> None:
        configs = self.config.resolve_cache(cache)
        refuse_fitted(configs, self.name)
        super().set_cache(configs)

    def previous(self):
        stages = self.config.stages
        index = stages.index(self.name)
        return self.base if index == 1 else self.base.later_stages[index - 2]

    def stage_cache_stats(self) -> dict:
        """The caches' counts over this stage's last run (one sampling run here; VSR sums its chunks')."""
        return self.transformer.cache_stats()

    def refine(self, out: VideoSysOutput, run) -> VideoSysOutput:
        """The previous stage's output -> this stage's. Every rank denoises (CFG parallel splits the branches, as the
        base's loop does), so a rank that did not decode the previous video (ranks > 0) decodes it here."""
        self.set_parallel(self.base.parallel)
        start = time.perf_counter()
        video = out.video
        if video.numel() == 0:
            with torch.inference_mode():
                video = self.previous().decode(out.latents.to(self.device, self.dtype))
        with torch.inference_mode():
            latents = self.run_stage(video, run)
            decode_start = time.perf_counter()
            last = self.config.stages[-1] == self.name
            if last and dist.is_initialized() and dist.get_rank() != 0:
                video = torch.zeros((latents.shape[0], 0, 0, 0, 3), dtype=torch.uint8)
            else:
                with self.stage("decode"):
                    video = self.decode(latents)
        end = time.perf_counter()
        stats = dict(out.stats)
        stats.update({f"{self.name}_denoise_s": decode_start - start, f"{self.name}_decode_s": end - decode_start,
                      f"{self.name}_steps": self.stage_steps, "total_s": stats.get("total_s", 0.0) + end - start})
        stats.update({f"{self.name}_{k}": v for k, v in self.stage_cache_stats().items()})
        return VideoSysOutput(video=video, stats=stats, latents=latents.float().cpu())


def summed(stats: list[dict]) -> dict:
    """Cache stats of several sampling runs as one: counts added, nested per method; other values the last run's."""
    out: dict = {}
    for one in stats:
        for key, value in one.items():
            if isinstance(value, dict):
                out[key] = summed([out.get(key, {}), value])
            elif isinstance(value, Number) and not isinstance(value, bool) and isinstance(out.get(key), Number):
                out[key] = out[key] + value
            else:
                out[key] = value
    return out
