"""FoCa (Zheng et al., "Forecast then Calibrate: Feature Caching as ODE for Efficient Diffusion Transformers",
arXiv 2508.16211; the TaylorSeer group): module features forecast by a predictor-corrector over the steps.

The paper's text was not reachable when this was written: the update rule follows the only description we
could read, cache-dit's FoCa calibrator (its comments and code; not copied). It treats a module's output over
the steps as the solution of an ODE dF/ds = g(F, s) and integrates it from cached values only:

    window   (F_k, F_km1): the module's two most recent values, computed OR forecast; it advances on EVERY
             step, so consecutive forecasts recurse on each other (TaylorSeer's extrapolate from the last
             computed step alone);
    anchors  (F_full, F_full_prev): its two most recent computed outputs;
    predict  F_bdf2 = 2 F_k - F_km1                                    (cache-dit's "BDF2" step)
    correct  F = F_bdf2 + 0.5 (d_full - d_curr),  d_full = F_full - F_full_prev,  d_curr = F_k - F_km1
             (Heun / trapezoid: F = F_k + (d_curr + d_full) / 2, the mean of the window's slope and the
             anchors' slope);
    a computed step shifts the window with the true output (F_km1 = the old F_k, F_k = the output) and the
    anchors; with one value in the window the forecast reuses it, with one anchor it is F_bdf2 alone.

Step gaps. cache-dit takes h = 1 everywhere, so with a full step every N steps its d_full spans N steps while
d_curr spans one, and the correction adds about (N - 1) / 2 steps' worth of change per forecast step. Read as
an ODE, both are slopes: we divide every difference by its step gap (d_full by the anchors' gap, d_curr by the
window's) and scale the step by the gap h to the step forecast,
    F = F_k + h (d_curr / h_k + d_full / h_full) / 2,
which is cache-dit's wherever the anchors are one step apart (right after the warm-up) and keeps the
trapezoid's meaning for every N: a line is forecast exactly, where the unnormalised form overshoots it by
(N - 1) / 2 slopes per step. `normalise=False` ("foca-<N>-raw") is cache-dit's literal h = 1 form.

Schedule, warm-up, kinds, state per module instance and CFG branch, statistics: TaylorSeer's
(taylorseer.ModuleForecast), decided from the step index alone, so every rank agrees without talking. FoCa's
own interval and warm-up are not known to us (paper not reachable): the defaults are our TaylorSeer's
(interval 5, warm-up 3: diffusers' TaylorSeerCacheConfig; the paper's schedule).
"""

from dataclasses import dataclass

import torch

from videosys.cache.hooks import Site
from videosys.cache.registry import register
from videosys.cache.taylorseer import KINDS, ModuleForecast, check_schedule


@dataclass
class FoCaConfig:
    # FoCa's own defaults unknown (paper not reachable): TaylorSeer's (taylorseer.TaylorSeerConfig)
    interval: int = 5  # N: a full step every N steps after the warm-up
    warmup: int = 3  # full steps at the start
    kinds: tuple[str, ...] = KINDS  # the module kinds forecast (the others always compute)
    schedule: str = "paper"  # TaylorSeer's "paper" or "diffusers" schedule (taylorseer.full_step)
    normalise: bool = True  # divide differences by their step gaps (the ODE reading); False: cache-dit's h = 1

    def __post_init__(self):
        self.kinds = check_schedule("FoCa", self)

    @classmethod
    def for_model(cls, setting: dict | None = None, **overrides) -> "FoCaConfig":
        """These defaults for every family (none published for ours), or a family's published fields."""
        return cls(**{**(setting or {}), **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None = None) -> "FoCaConfig | None":
        """"3" (interval 3), optionally "-w<warmup>" and "-raw" (cache-dit's h = 1): "foca-3", "foca-4-w2-raw"."""
        parts = arg.split("-")
        if not parts[0].isdigit():
            return None
        fields = {"interval": int(parts[0])}
        for part in parts[1:]:
            if part == "raw":
                fields["normalise"] = False
            elif part[:1] == "w" and part[1:].isdigit():
                fields["warmup"] = int(part[1:])
            else:
                return None
        return cls(**fields)


class Track:
    """One module's state: the window (newest last) and the anchors, each [(step, value)], at most two."""

    __slots__ = ("window", "anchors")

    def __init__(self):
        self.window: list[tuple[int, torch.Tensor]] = []
        self.anchors: list[tuple[int, torch.Tensor]] = []

    def computed(self, step: int, out: torch.Tensor) -> None:
        if self.window and self.window[-1][1].shape != out.shape:  # a new resolution: start over
            self.window, self.anchors = [], []
        if self.window and self.window[-1][0] == step:  # the same module twice in one step: keep the first
            return
        self.window = (self.window + [(step, out)])[-2:]
        self.anchors = (self.anchors + [(step, out)])[-2:]

    def forecast(self, step: int, normalise: bool = True) -> torch.Tensor:
        """The predictor-corrector value at `step`; the window advances with it."""
        if self.window[-1][0] == step:  # the same module twice in one step: its first value
            return self.window[-1][1]
        out = predict(self.window, self.anchors, step, normalise)
        self.window = [self.window[-1], (step, out)]
        return out


def predict(window: list, anchors: list, step: int, normalise: bool = True) -> torch.Tensor:
    """F_k + h (d_curr / h_k + d_full / h_full) / 2 at `step` from the window and anchors ([(step, value)],
    newest last); with normalise=False every gap is 1 (cache-dit: 2 F_k - F_km1 + 0.5 (d_full - d_curr))."""
    s_k, f_k = window[-1]
    if len(window) < 2:
        return f_k
    s_km1, f_km1 = window[-2]
    h, h_k = (step - s_k, s_k - s_km1) if normalise else (1, 1)
    slope = (f_k - f_km1) / h_k
    predicted = f_k + h * slope  # 2 F_k - F_km1 at equal gaps
    if len(anchors) < 2:
        return predicted
    (a_prev, full_prev), (a, full) = anchors
    full_slope = (full - full_prev) / ((a - a_prev) if normalise else 1)
    return predicted + (0.5 * h) * (full_slope - slope)


class FoCa(ModuleForecast):
    """state[site] = Track."""

    def remember(self, site: Site, out: torch.Tensor) -> None:
        self.state.setdefault(site, Track()).computed(self.step, out)

    def predict(self, site: Site) -> torch.Tensor:
        return self.state[site].forecast(self.step, self.config.normalise)


register("foca", FoCaConfig, FoCa, for_model=FoCaConfig.for_model, parse=FoCaConfig.from_name, names=("foca",),
         sweep=("foca-2", "foca-3", "foca-4", "foca-5", "foca-6"), syntax="foca-<interval>[-w<warmup>][-raw]",
         reuses_last_step=True)  # TaylorSeer's schedule: may forecast the last step
