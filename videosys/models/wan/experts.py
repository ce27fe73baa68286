"""Wan2.2 A14B's two experts, seen by the shared loop as one transformer.

The high-noise expert (`transformer`) runs while t >= boundary_ratio * num_train_timesteps, the low-noise one
(`transformer_2`) after (diffusers' WanPipeline, Wan2.2 wan/text2video.py). They are separate transformer instances
with separate cache states: every cache method enabled here is enabled on each expert (its own state object), each
expert sees every step's index (so a published schedule keyed by step index keeps its meaning) but is called only on
its own steps; the low-noise expert's first step has no state yet and computes. Stats are summed over the experts,
with each expert's own under "experts".
"""

import dataclasses

import torch
from torch import nn

from videosys.cache import CacheMixin

EXPERT_NAMES = ("high", "low")


class WanExperts(nn.Module, CacheMixin):
    def __init__(self, high: nn.Module, low: nn.Module, boundary_timestep: float, settings: dict | None = None):
        super().__init__()
        self.high, self.low = high, low
        self.boundary_timestep = boundary_timestep
        # per-expert settings (a calibration's tables): {"high": {method: fields}, "low": {method: fields}}
        self.settings = settings or {}
        self.low_noise = False  # which expert runs now (a flag, not a module attribute: no duplicate parameters)

    # ---- what the pipeline and the loop read of a transformer --------------------------------------
    @property
    def config(self):
        return self.high.config

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype

    @property
    def experts(self) -> tuple[nn.Module, nn.Module]:
        return self.high, self.low

    @property
    def current(self) -> nn.Module:
        return self.low if self.low_noise else self.high

    def select(self, timestep: float) -> nn.Module:
        """The expert for this timestep (diffusers: `t >= boundary_timestep` -> transformer)."""
        self.low_noise = float(timestep) < self.boundary_timestep
        return self.current

    def forward(self, *args, **kwargs):
        return self.current(*args, **kwargs)

    def set_parallel(self, state) -> None:
        self.parallel = state
        for expert in self.experts:
            expert.set_parallel(state)

    # ---- caches: one state per expert -----------------------------------------------------------------
    @property
    def cache_branch(self) -> str:
        return self.high.cache_branch

    @cache_branch.setter
    def cache_branch(self, value: str) -> None:
        for expert in self.experts:
            expert.cache_branch = value

    @property
    def caches(self) -> dict:
        """The high-noise expert's states (the low one has the same methods with the same configs)."""
        return self.high.caches

    def enable_cache(self, config) -> None:
        """The method on each expert, each with its own state; the low-noise expert's config takes its own table
        where the config holds the high-noise expert's (a field the spec set otherwise is left as given)."""
        self.high.enable_cache(config)
        self.low.enable_cache(self.low_config(config))

    def low_config(self, config):
        from videosys.cache.registry import method_of

        name = method_of(config).name
        high, low = self.settings.get("high", {}).get(name, {}), self.settings.get("low", {}).get(name, {})
        changes = {key: value for key, value in low.items()
                   if key in high and _same(getattr(config, key, None), high[key])}
        return dataclasses.replace(config, **changes) if changes else config

    def disable_cache(self) -> None:
        for expert in self.experts:
            expert.disable_cache()

    def active_cache(self, name: str):
        return self.high.active_cache(name)

    def cache_begin(self, timesteps, refresh_steps=()) -> None:
        for expert in self.experts:
            expert.cache_begin(timesteps, refresh_steps)

    def cache_step(self, index: int, timestep: float) -> None:
        self.select(timestep)
        for expert in self.experts:
            expert.cache_step(index, timestep)

    def cache_stats(self) -> dict:
        per_expert = {name: expert.cache_stats() for name, expert in zip(EXPERT_NAMES, self.experts)}
        out = {}
        for method in self.high.caches:
            stats = {name: per_expert[name].get(method, {}) for name in EXPERT_NAMES}
            merged = {}
            for key in stats["high"]:
                values = [stats[name].get(key) for name in EXPERT_NAMES]
                if all(isinstance(v, list) for v in values):
                    merged[key] = sorted(values[0] + values[1])
                elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    merged[key] = values[0] + values[1]
            out[method] = {**merged, "experts": stats}
        return out

    def cache_postfix(self) -> str:
        return self.current.cache_postfix()

    def cache_output(self, compute):
        return self.current.cache_output(compute)

    def cache_cfg_skipper(self):
        return self.current.cache_cfg_skipper()

    def cache_cfg_observe(self, uncond, cond) -> None:
        self.current.cache_cfg_observe(uncond, cond)


def _same(value, published) -> bool:
    """A config field's value equals a published one (tuples of floats against JSON lists)."""
    if isinstance(published, (list, tuple)):
        return isinstance(value, (list, tuple)) and tuple(map(float, value)) == tuple(map(float, published))
    return value == published
