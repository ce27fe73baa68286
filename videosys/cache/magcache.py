"""MagCache (Ma et al., "Magnitude-aware Cache", Zehong-Ma/MagCache; diffusers hooks/mag_cache.py).

The residual the block stack adds (output - input) changes slowly and its magnitude shrinks at a steady,
model-specific rate: ratio_i = mean over tokens of |r_i| / |r_{i-1}| (L2 norms over channels), measured once
per model by a calibration (videosys/cache/calibrate.py: `calibrate_magcache`). At the block-stack hook point,
from step round(retention_ratio * steps) on, each step multiplies the accumulated ratio by ratio_i and adds
|1 - accumulated ratio| to an error; while the error stays <= threshold and at most `max_skip_steps`
steps in a row were skipped, the stack is skipped and the last computed residual added; otherwise the stack
runs and the accumulators restart. Decisions come from host values only (the ratios and the step index), so
every rank decides alike without talking and without a host sync.

Ratios recorded for one number of steps serve another by nearest-index interpolation (as the authors'
code and diffusers do). A Latte / Open-Sora stack unit is a (spatial, temporal) pair: the residual is over
the whole stack, never one block list.
"""

from dataclasses import dataclass

import torch

from videosys.cache.hooks import BlockStack, StepCache
from videosys.cache.registry import NeedsCalibration, register

# Magnitude ratios per step (first = 1.0) are per model: a family publishes them in its cache_settings.py
# ("magcache": ratios), by our calibration (calibrate_magcache) where no authors' table exists: the MagCache
# authors publish ratios for Wan 2.1, HunyuanVideo, FLUX, Open-Sora 2.0, none of our families (none published).


@dataclass
class MagCacheConfig:
    # diffusers' MagCacheConfig defaults, the authors' Wan 2.1 / FLUX settings (threshold 0.06, K = 3, 20%)
    threshold: float = 0.06  # error budget of the accumulated |1 - ratio|
    max_skip_steps: int = 3  # K: consecutive skipped steps at most
    retention_ratio: float = 0.2  # the first 20% of the steps always compute
    ratios: tuple[float, ...] = ()  # calibrated magnitude ratios, one per step of the calibration run

    def __post_init__(self):
        if self.threshold < 0 or self.max_skip_steps < 0 or not 0 <= self.retention_ratio <= 1:
            raise ValueError(f"MagCache needs threshold >= 0, max_skip_steps >= 0, 0 <= retention_ratio <= 1; "
                             f"got {self}")
        self.ratios = tuple(float(r) for r in self.ratios)
        if any(not r > 0 for r in self.ratios):
            raise ValueError(f"MagCache ratios must be > 0, got {self.ratios}")

    @classmethod
    def for_model(cls, setting: dict | None = None, **overrides) -> "MagCacheConfig":
        """The family's published setting (its ratios) with `overrides`; none published and none given: refused,
        naming the calibration (a spec {"method": "magcache", "ratios": [...]} supplies them)."""
        if setting is None and "ratios" not in overrides:
            raise NeedsCalibration("magcache", "magnitude ratios", "{'method': 'magcache', 'ratios': [...]}")
        return cls(**{**(setting or {}), **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None = None) -> "MagCacheConfig | None":
        """A threshold, as in "magcache-0.1"."""
        try:
            threshold = float(arg)
        except ValueError:
            return None
        return cls.for_model(setting, threshold=threshold)


def nearest_interp(values: tuple[float, ...], length: int) -> list[float]:
    """values resampled to `length` by nearest index (the authors' / diffusers' nearest_interp)."""
    if length <= 1:
        return list(values[-1:]) * length
    scale = (len(values) - 1) / (length - 1)
    return [values[int(torch.round(torch.tensor(i * scale, dtype=torch.float32)))] for i in range(length)]


@dataclass
class _BranchState:
    residual: tuple[torch.Tensor, ...] | None = None
    ratio: float = 1.0
    error: float = 0.0
    skipped: int = 0
    step: int = -1  # the last step this branch's stack was called on (computed or skipped)


class MagCache(StepCache):
    def __init__(self, config: MagCacheConfig):
        if not config.ratios:  # a config object without them (a name or dict spec is refused when it is built)
            raise NeedsCalibration("magcache", "magnitude ratios", "MagCacheConfig(ratios=...) or "
                                   "{'method': 'magcache', 'ratios': [...]}")
        super().__init__(config)

    def begin(self, timesteps, refresh_steps=()) -> None:
        super().begin(timesteps, refresh_steps)
        n = len(timesteps)
        self.ratios = nearest_interp(self.config.ratios, n) if n else []
        self.retention = int(self.config.retention_ratio * n + 0.5)

    def skip(self, state: _BranchState, streams: tuple) -> bool:
        """Decide for this step (and advance the accumulators): True = add the kept residual."""
        last, state.step = state.step, self.step
        if self.step < self.retention or self.step in self.refresh_steps:
            return False
        # every step since this branch's last call, the steps a method around it skipped included: the residual
        # kept drifts over each of them (alone, or when the branch runs every step: this step only)
        for step in range(max(last + 1, self.retention), self.step + 1):
            ratio = self.ratios[step] if step < len(self.ratios) else 1.0
            state.ratio *= ratio
            state.skipped += 1
            state.error += abs(1.0 - state.ratio)
        c = self.config
        if (state.residual is not None and state.error <= c.threshold and state.skipped <= c.max_skip_steps
                and all(r.shape == s.shape for r, s in zip(state.residual, streams))):
            return True
        state.ratio, state.error, state.skipped = 1.0, 0.0, 0
        return False

    def stack(self, stack: BlockStack) -> tuple:
        state = self.branches.setdefault(stack.branch, _BranchState())
        if self.skip(state, stack.streams):
            self.reused_steps.append(self.step)
            return tuple(s + r for s, r in zip(stack.streams, state.residual))
        out = stack.run(*stack.streams)
        state.residual = tuple(o - s for o, s in zip(out, stack.streams))
        self.computed += 1
        return out


register("magcache", MagCacheConfig, MagCache, for_model=MagCacheConfig.for_model, parse=MagCacheConfig.from_name,
         names=(), sweep=("magcache-0.03", "magcache", "magcache-0.12"), syntax="magcache-<threshold>",
         needs=("ratios",),
         reuses_last_step=True)  # as the authors' and diffusers': nothing forces the last step to compute
