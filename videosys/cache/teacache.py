"""TeaCache (Timestep Embedding Aware Cache, arXiv 2411.19108).

Per step the model hands over an *indicator* (a timestep-modulated input of its first
block). Its relative L1 change, rescaled by a fitted polynomial, accumulates; while the sum
stays under the threshold the whole block stack is skipped and the residual it added last
time (output - input) is added instead. The first `warmup_steps` and the last `final_steps` always compute
(1 and 1: the paper's; a family may publish others).

Beyond the fitted range. Several published polynomials (Latte, CogVideoX) turn down after a
last local maximum and go negative for large changes, so a big jump in the indicator would
*lower* the accumulated distance and cause skipping. We evaluate the polynomial at
min(x, x_peak), x_peak being that last maximum: identical to the reference up to x_peak,
non-decreasing after it (a large change always pushes towards computing).

Three parts, as every cache file here: the config (published defaults), the per-branch
state, and TeaCache, which acts at the block-stack hook point (videosys/cache/hooks.py):
    if teacache.skip(indicator): x = teacache.apply_cached(x)
    else: x_in = x; x = blocks(x); teacache.store(x_in, x)
"""

import math
from dataclasses import dataclass
from functools import partial

import torch

from videosys.cache.hooks import BlockStack, StepCache
from videosys.cache.registry import NeedsCalibration, Flag, LegacyFlags, register

# The rescaling polynomials are per model: each family publishes its own (videosys/models/<family>/
# cache_settings.py, "teacache": coefficients); a model without one fits it (videosys.cache.calibrate).
THRESHOLDS = {"slow": 0.1, "fast": 0.2}  # the paper's two operating points, all four models


@dataclass
class TeaCacheConfig:
    threshold: float = 0.1
    # the model's rescaling polynomial, highest power first: no default, it is the model's own (a family's
    # published one through for_model / a cache name, or a calibration's)
    coefficients: tuple[float, ...] = ()
    # steps that always compute at the start and at the end (0: none). The paper's code computes the first and the
    # last; a family's published setting may say otherwise (its authors' `ret_steps` / `cutoff_steps`)
    warmup_steps: int = 1
    final_steps: int = 1

    def __post_init__(self):
        if self.threshold < 0:
            raise ValueError(f"TeaCache threshold must be >= 0, got {self.threshold}")
        if self.warmup_steps < 1 or self.final_steps < 0:
            raise ValueError(f"TeaCache needs warmup_steps >= 1 (the first step has nothing to reuse) and "
                             f"final_steps >= 0, got {self.warmup_steps}, {self.final_steps}")
        self.coefficients = tuple(float(c) for c in self.coefficients)
        if not self.coefficients:
            raise ValueError("TeaCache needs the model's polynomial coefficients: give coefficients=... (the family's "
                             "published ones: a cache name such as 'teacache-slow', or fit them: "
                             "videosys.cache.calibrate.calibrate)")

    @classmethod
    def for_model(cls, setting: dict | None, **overrides) -> "TeaCacheConfig":
        """The family's published setting (its coefficients) with `overrides` (threshold 0.1, the paper's "slow",
        unless given)."""
        if setting is None and "coefficients" not in overrides:
            raise NeedsCalibration("teacache", "rescaling polynomial (TeaCache coefficients)",
                                   "{'method': 'teacache', 'threshold': ..., 'coefficients': [...]}")
        return cls(**{**(setting or {}), **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None) -> "TeaCacheConfig | None":
        """"slow", "fast" or a threshold ("0.15"), as in "teacache-0.15"; None if it is none of them."""
        try:
            threshold = THRESHOLDS[arg] if arg in THRESHOLDS else float(arg)
        except ValueError:
            return None
        return cls.for_model(setting, threshold=threshold)


def rescale(coefficients: tuple[float, ...], x: float) -> float:
    """numpy.poly1d(coefficients)(x), by Horner's rule."""
    out = 0.0
    for c in coefficients:
        out = out * x + c
    return out


def last_peak(coefficients: tuple[float, ...]) -> float:
    """The largest x > 0 where the polynomial has a local maximum (inf if it never turns down)."""
    import numpy as np

    poly = np.poly1d(coefficients)
    slope, curve = poly.deriv(), poly.deriv(2)
    peaks = [r.real for r in np.atleast_1d(slope.r) if abs(r.imag) < 1e-12 and r.real > 0 and curve(r.real) < 0]
    return float(max(peaks)) if peaks else float("inf")


def relative_l1(current: torch.Tensor, previous: torch.Tensor, group=None) -> torch.Tensor:
    """mean(|current - previous|) / mean(|previous|) over the whole (batched) tensor.

    With a process group the sums run over every rank's part, so a model split over ranks
    (sequence shards, CFG branches) gets the value of the whole batch. The sums accumulate in fp32
    whatever the tensors' dtype: an fp16 sum over a Latte-size indicator (millions of values near
    1) passes 65504 and turns into inf, and inf / inf into nan.
    """
    from videosys.core.comm import all_reduce_sum

    sums = torch.stack([torch.sum((current - previous).abs(), dtype=torch.float32),
                        torch.sum(previous.abs(), dtype=torch.float32)])
    sums = all_reduce_sum(sums, group)
    return sums[0] / sums[1]


@dataclass
class _BranchState:
    previous: torch.Tensor | None = None
    accumulated: float = 0.0
    residual: tuple[torch.Tensor, ...] | None = None


class TeaCache(StepCache):
    """One per transformer; one state per CFG branch that is run as a separate call (StepCache: the step, the
    branches, the counts; computes on `refresh_steps` as on the first and last)."""

    def __init__(self, config: TeaCacheConfig):
        super().__init__(config)
        self.x_peak = last_peak(config.coefficients)

    def skip(self, indicator: torch.Tensor, branch: str = "batch", distance=relative_l1) -> bool:
        """Decide for this step: True = reuse the cached residual.

        `distance` lets a sequence-parallel model reduce the L1 sums over its ranks, so every
        rank takes the same decision.
        """
        state = self.branches.setdefault(branch, _BranchState())
        c = self.config
        edge = (self.step < c.warmup_steps or self.step >= self.num_steps - c.final_steps
                or self.step in self.refresh_steps)
        if edge or state.previous is None or state.residual is None:
            compute = True
        else:
            # one host sync per step: the decision drives Python control flow
            x = float(distance(indicator, state.previous))
            if math.isfinite(x):
                state.accumulated += rescale(self.config.coefficients, min(x, self.x_peak))
                compute = state.accumulated >= self.config.threshold
            else:  # an overflowed or undefined distance (0 / 0) says nothing: compute rather than skip on nan
                compute = True
        if compute:
            state.accumulated = 0.0
        state.previous = indicator
        if compute:
            self.computed += 1
        else:
            self.reused_steps.append(self.step)
        return not compute

    def apply_cached(self, *xs: torch.Tensor, branch: str = "batch"):
        """x + the residual the block stack added when it last ran (one per stream)."""
        out = tuple(x + r for x, r in zip(xs, self.branches[branch].residual))
        return out if len(out) > 1 else out[0]

    def store(self, inputs, outputs, branch: str = "batch") -> None:
        inputs = inputs if isinstance(inputs, tuple) else (inputs,)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        self.branches[branch].residual = tuple(o - i for i, o in zip(inputs, outputs))

    def stack(self, stack: BlockStack) -> tuple:
        """The block-stack hook: the cached residuals on a step TeaCache skips, else the stack (and store)."""
        distance = partial(relative_l1, group=stack.group)
        if self.skip(stack.indicator(), branch=stack.branch, distance=distance):
            out = self.apply_cached(*stack.streams, branch=stack.branch)
            return out if isinstance(out, tuple) else (out,)
        out = stack.run(*stack.streams)
        self.store(stack.streams, out, branch=stack.branch)
        return out

    def postfix(self) -> str:
        return f"tea {len(self.reused_steps)}/{self.computed + len(self.reused_steps)} reused"


register("teacache", TeaCacheConfig, TeaCache, for_model=TeaCacheConfig.for_model, parse=TeaCacheConfig.from_name,
         names=("teacache-slow", "teacache-fast"),
         sweep=("teacache-0.05", "teacache-slow", "teacache-fast", "teacache-0.3", "teacache-0.5"),
         # the last step computes (unless a family publishes final_steps=0: TeaCache4Wan2.1's use_ret_steps mode)
         syntax="teacache-<threshold>", needs=("coefficients",), reuses_last_step=False,
         # the paper's switches: enable_teacache=True with teacache_thresh (0.1 = the paper's "slow", 0.2 = "fast")
         legacy_flags=LegacyFlags("enable_teacache", lambda config: f"teacache-{config.teacache_thresh}",
                                  (Flag("teacache_thresh", float, 0.1, (">= 0", lambda v: v >= 0)),)))
