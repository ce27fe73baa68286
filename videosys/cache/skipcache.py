"""Skip-Cache (Skip-DiT, arXiv 2411.17616): DeepCache-style caching through Skip-DiT's skip branches.

Needs a model trained with long skip branches (unit i joined to unit L-1-i; Latte with
`skip_connections=True`). A full step runs the whole stack and keeps the input of unit L-b
(before its skip fusion); a cached step runs only units 0 .. b-1 and L-b .. L-1: unit L-b's kept
input is fused with unit b-1's fresh output through the skip branch. b = 1 in the paper: a cached
step runs the first unit and the last.

The schedule of the authors' LatteT2V_skip_cache (text-to-video/models/latte_t2v_skip_cache.py,
configs "cache: N2-700-50"), per forward call: full when count % N == 0, nothing is kept, or
t >= 700; count += 1 after each call; after a call with t <= 50 the count and the kept tensor are
reset (so the last steps run full). Their history-error correction is dead code in the release (its
float timesteps never match the JSON's string keys) and is left out.

Decisions come from the call count and the host-side timestep: every rank decides alike without
talking. Acts at the block-stack hook point (videosys/cache/hooks.py) with partial runs
(`stack.run(x, start, stop)`), which the model composes through its per-forward skip store.
"""

import typing
from dataclasses import dataclass

import torch

from videosys.cache.hooks import BlockStack, StepCache
from videosys.cache.registry import register


@dataclass
class SkipCacheConfig:
    interval: int = 2  # N: a full step every N calls (the authors' cache_gap, configs "N2")
    start_timestep: float = 700.0  # cached steps only below this timestep (configs "-700")
    stop_timestep: float = 50.0  # reset after a step at or below this one (configs "-50")
    branch: int = 1  # b: units run at each end on a cached step (the authors' skip_at_branch = 1)
    # a config can tell, without weights, that its model has none (BaseConfig.skip_branches): refused when built
    needs_skip_branches: typing.ClassVar[bool] = True

    def __post_init__(self):
        if int(self.interval) != self.interval or self.interval < 1:
            raise ValueError(f"Skip-Cache interval must be an integer >= 1, got {self.interval!r}")
        if int(self.branch) != self.branch or self.branch < 1:
            raise ValueError(f"Skip-Cache branch must be an integer >= 1, got {self.branch!r}")
        if self.stop_timestep >= self.start_timestep:
            raise ValueError(f"Skip-Cache needs stop_timestep < start_timestep, got {self.stop_timestep} "
                             f">= {self.start_timestep}")
        self.interval, self.branch = int(self.interval), int(self.branch)
        self.start_timestep, self.stop_timestep = float(self.start_timestep), float(self.stop_timestep)

    @classmethod
    def for_model(cls, setting: dict | None = None, **overrides) -> "SkipCacheConfig":
        """The paper's setting (for the one text-to-video model the authors trained skip branches for), or a
        family's published fields."""
        return cls(**{**(setting or {}), **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None = None) -> "SkipCacheConfig | None":
        """"3" of "skipcache-3": the interval; None if it is not an integer."""
        return cls(interval=int(arg)) if arg.isdigit() and int(arg) >= 1 else None


@dataclass
class _BranchState:
    count: int = 0
    kept: torch.Tensor | None = None  # unit L-b's input (before its fusion) at the last full step


class SkipCache(StepCache):
    """One per transformer; one state per CFG branch run as a separate call (StepCache: the step, the branches,
    the counts)."""

    timestep = 1000.0  # the step's, from set_step (kept across generations, as the step index is reset)

    def check_model(self, model) -> None:
        config = getattr(model, "config", None)
        if not getattr(config, "skip_connections", False):
            raise ValueError(f"Skip-Cache needs a model with Skip-DiT skip branches; {type(model).__name__} has "
                             "none (a model trained with skip_connections=True, e.g. a family's Skip-DiT preset)")
        if 2 * self.config.branch > config.num_layers:
            raise ValueError(f"Skip-Cache branch={self.config.branch} needs at least {2 * self.config.branch} "
                             f"units, the model has {config.num_layers}")

    def begin(self, timesteps: list[float], refresh_steps=()) -> None:
        super().begin(timesteps, refresh_steps)
        self.units_run = 0

    def set_step(self, index: int, timestep: float) -> None:
        self.step, self.timestep = index, float(timestep)

    def reuse(self, state: _BranchState) -> bool:
        """The authors' decision for this call: True = a cached step."""
        cfg = self.config
        return not (state.count % cfg.interval == 0 or state.kept is None or self.timestep >= cfg.start_timestep
                    or self.step in self.refresh_steps)

    def stack(self, stack: BlockStack) -> tuple:
        state = self.branches.setdefault(stack.branch, _BranchState())
        (x,) = stack.streams
        last = stack.num_units - self.config.branch  # unit L-b: the one whose input is kept
        if self.reuse(state):
            stack.run(x, start=0, stop=self.config.branch)  # stores the shallow outputs, unit b-1's the skip
            out = stack.run(state.kept, start=last)  # fused with that skip, then units L-b .. L-1
            self.reused_steps.append(self.step)
            self.units_run += 2 * self.config.branch
        else:
            (state.kept,) = stack.run(x, start=0, stop=last)
            out = stack.run(state.kept, start=last)
            self.computed += 1
            self.units_run += stack.num_units
        state.count += 1
        if self.timestep <= self.config.stop_timestep:  # the last steps run full
            state.count, state.kept = 0, None
        return out

    def stats(self) -> dict:
        return {**super().stats(), "units_run": self.units_run}

    def postfix(self) -> str:
        return f"skip {len(self.reused_steps)}/{self.computed + len(self.reused_steps)} cached"


# no published names / sweep: those are the variants every model is benchmarked and served with, and
# Skip-Cache refuses a model without skip branches ("skipcache" alone is the paper's N = 2)
register("skipcache", SkipCacheConfig, SkipCache, for_model=SkipCacheConfig.for_model,
         parse=SkipCacheConfig.from_name, syntax="skipcache-<interval>",
         # the reset after a step at or below stop_timestep runs the steps after it full, but a schedule whose
         # second-to-last timestep is above it may cache the last one
         reuses_last_step=True)
