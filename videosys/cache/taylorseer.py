"""TaylorSeer (Liu et al., "From Reusing to Forecasting", arXiv 2503.06923, ICCV'25).

At the module hook point: every attention (by kind) and MLP of every block computes on the first
`warmup` steps and on every `interval`-th step after them (the "full" steps); on the steps between,
its output is *forecast* by a Taylor expansion around the last full step,

    F(i) ~ sum_k  D_k * (i - i_last)^k / k!,   k = 0 .. max_order,

with D_0 the last computed output and D_{k+1} = (D_k - D_k') / (i_last - i_prev) the divided differences
of consecutive full steps (D_k' the factors of the previous full step), as the authors' code and
diffusers' hooks/taylorseer_cache.py build them. Everything is decided from the step index, which every
rank shares, so the ranks agree without talking (a forecast module also skips its communication).

Schedule. The authors' code (cal_type) computes on steps 0 .. warmup-1 and then whenever the counter of
forecast steps since the last full step reaches interval-1: full steps warmup-1 + k*interval. diffusers
computes on steps warmup+1 + k*interval instead (its step warmup is always forecast). We follow the
paper; `schedule="diffusers"` gives diffusers' (tests/test_cache_peers.py compares with diffusers under both).

What a site forecasts is what `compute()` returns at it (see pab.py: Latte / Open-Sora gate their outputs
inside the call, CogVideoX / Open-Sora-Plan v1.2 outside), one state per module instance and CFG branch.
"""

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch

from videosys.cache.hooks import Cache, Site
from videosys.cache.registry import register

KINDS = ("spatial", "temporal", "cross", "full", "mlp")
SCHEDULES = ("paper", "diffusers")


@dataclass
class TaylorSeerConfig:
    # diffusers' TaylorSeerCacheConfig defaults (cache_interval=5, max_order=1, disable_cache_before_step=3);
    # the authors' ComfyUI port also starts with first_enhance=3 full steps
    interval: int = 5  # N: a full step every N steps after the warm-up
    max_order: int = 1  # O: order of the expansion (0 = reuse the last output)
    warmup: int = 3  # full steps at the start
    kinds: tuple[str, ...] = KINDS  # the module kinds forecast (the others always compute)
    schedule: str = "paper"  # "paper" (the authors' cal_type) or "diffusers" (its TaylorSeerCacheHook)

    def __post_init__(self):
        if self.max_order < 0:
            raise ValueError(f"TaylorSeer needs max_order >= 0; got {self}")
        self.kinds = check_schedule("TaylorSeer", self)

    @classmethod
    def for_model(cls, setting: dict | None = None, **overrides) -> "TaylorSeerConfig":
        """These defaults for every family (the paper evaluates none of ours: FLUX, HunyuanVideo, DiT), or a
        family's published fields where it has some."""
        return cls(**{**(setting or {}), **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None = None) -> "TaylorSeerConfig | None":
        """"3" (interval 3) or "3-2" (interval 3, order 2), as in "taylorseer-3-2"."""
        parts = arg.split("-")
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() for p in parts):
            return None
        return cls(interval=int(parts[0]), max_order=int(parts[1]) if len(parts) == 2 else cls.max_order)


def check_schedule(name: str, config) -> tuple[str, ...]:
    """Raise for a bad interval / warm-up / schedule / kinds of a module forecaster's config; its kinds as a tuple."""
    if config.interval < 1 or config.warmup < 1:
        raise ValueError(f"{name} needs interval >= 1 and warmup >= 1; got {config}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"{name} schedule must be one of {SCHEDULES}, got {config.schedule!r}")
    unknown = set(config.kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"{name} kinds must be among {KINDS}, got {sorted(unknown)}")
    return tuple(config.kinds)


def full_step(index: int, interval: int, warmup: int, schedule: str = "paper") -> bool:
    """Full step? The paper's schedule: steps 0 .. warmup-1, then warmup-1 + k * interval;
    diffusers': then warmup+1 + k * interval."""
    first = warmup - 1 if schedule == "paper" else warmup + 1
    return index < warmup or (index - first) % interval == 0


def update_factors(factors: list[torch.Tensor] | None, output: torch.Tensor, distance: int,
                   max_order: int) -> list[torch.Tensor]:
    """The Taylor factors after a full step `distance` steps after the previous one (None: the first)."""
    new = [output]
    for k in range(min(max_order, len(factors) if factors is not None else 0)):
        if factors[k].shape != output.shape:  # shapes moved (a new resolution): restart the expansion
            break
        new.append((new[k] - factors[k]) / distance)
    return new


def forecast(factors: list[torch.Tensor], offset: int) -> torch.Tensor:
    """sum_k factors[k] * offset^k / k!"""
    out = factors[0]
    for k in range(1, len(factors)):
        out = out + factors[k] * (offset ** k / math.factorial(k))
    return out


class ModuleForecast(Cache):
    """A module-level forecaster on TaylorSeer's schedule (config: interval, warmup, kinds, schedule): on full
    steps (and refresh steps) every module of `kinds` computes and `remember`s its output; on the steps between
    a module with a state returns `predict(site)`. State per Site (module instance and CFG branch) in
    `self.state`; subclasses define `remember` and `predict`. FoCa (foca.py) shares it."""

    def __init__(self, config):
        self.config = config
        self.begin([])

    def begin(self, timesteps, refresh_steps=()) -> None:
        self.refresh_steps = frozenset(refresh_steps)
        self.step, self.full = 0, True
        self.state: dict[Site, object] = {}
        self.updated: dict[Site, int] = {}  # the step each module last computed on
        self.last_full = 0  # the schedule's last full step so far
        self.counts: Counter = Counter()
        self.forecast_steps: list[int] = []

    def set_step(self, index: int, timestep: float) -> None:
        self.step = index
        c = self.config
        self.full = full_step(index, c.interval, c.warmup, c.schedule) or index in self.refresh_steps
        if self.full:
            self.last_full = index
        if not self.full:
            self.forecast_steps.append(index)

    def module(self, site: Site, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if site.kind not in self.config.kinds:
            return compute()
        # a module that missed the last full step (a method around it skipped that step, or its CFG branch did not
        # run) computes: its state would be extrapolated over more steps than the schedule spans
        if not self.full and site in self.state and self.updated[site] >= self.last_full:
            self.counts["forecast"] += 1
            return self.predict(site)
        return self.refresh(site, compute)

    def refresh(self, site: Site, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Compute and remember, as on a full step (hooks.Cache.refresh)."""
        out = compute()
        if site.kind not in self.config.kinds:
            return out
        self.counts["computed"] += 1
        self.updated[site] = self.step
        self.remember(site, out)
        return out

    def remember(self, site: Site, out: torch.Tensor) -> None:
        raise NotImplementedError

    def predict(self, site: Site) -> torch.Tensor:
        raise NotImplementedError

    def stats(self) -> dict:
        return {"computed_modules": self.counts["computed"], "forecast_modules": self.counts["forecast"],
                "forecast_step_indices": list(self.forecast_steps)}

    def postfix(self) -> str:
        total = self.counts["computed"] + self.counts["forecast"]
        return f"{self.method_name} {self.counts['forecast']}/{total} forecast"


class TaylorSeer(ModuleForecast):
    """state[site] = (Taylor factors, the step of the module's last full compute)."""

    def remember(self, site: Site, out: torch.Tensor) -> None:
        factors, previous = self.state.get(site, (None, None))
        distance = self.step - previous if previous is not None else 1
        if distance > 0:  # the same module twice in one step (never in our families) keeps its first factors
            self.state[site] = (update_factors(factors, out, distance, self.config.max_order), self.step)

    def predict(self, site: Site) -> torch.Tensor:
        factors, updated = self.state[site]
        return forecast(factors, self.step - updated)


register("taylorseer", TaylorSeerConfig, TaylorSeer, for_model=TaylorSeerConfig.for_model,
         parse=TaylorSeerConfig.from_name, names=("taylorseer",),
         sweep=("taylorseer-2", "taylorseer-3", "taylorseer-4", "taylorseer-5", "taylorseer-3-2"),
         syntax="taylorseer-<interval>[-<order>]",
         reuses_last_step=True)  # the schedule (full_step) may forecast the last step
