"""Output forecast (ours): skip the whole model on a step and extrapolate its prediction from the last computed ones.

The model's prediction for a step (after the final layer; guided with CFG) is a smooth function of the step
index. On computed steps the method keeps the last `order + 1` predictions (fp32); on a skipped step it
supplies the polynomial through them, evaluated at this step: Newton's divided differences on the computed
step indices (exact for a polynomial of degree <= order, on any spacing). Forecasting the whole output
rather than the block stack's residual (TeaCache) or each module's output (TaylorSeer) also skips the
embeddings and the final layer, and extrapolates the quantity the sampler consumes. Order 1 is
diffusers' TaylorSeer lite mode (it forecasts the last layer's output, first order).
`basis="taylor"` uses TaylorSeer's estimate instead (f_{j+1} = (f_j - f_j,old) / gap, forecast
sum f_j k^j / j!): the same at order 1, a damped extrapolation at higher orders.

Three schedules:
- calibrated (`steps`, names `forecast-s<K>`): the K steps that compute, found for this model and step count by
  `python scripts/calibrate_teacache.py --method forecast --computes K` (videosys/cache/forecast_schedule.py) and
  kept in the family's cache_settings ("schedules": K -> steps); which steps compute matters more than how the
  output is extrapolated (docs/caches/forecast.md: on the demo model, on seeds the search never saw, the same
  order-1 forecast keeps 28.8 dB on diffusers' TaylorSeer-lite schedule and 36.3 dB on the calibrated one, both
  computing 13 of 50 steps);
- fixed (`interval` N > 0): steps 0 .. warmup-1 compute, then every N-th step; host values only, so every
  rank decides alike without a collective;
- adaptive (`interval` 0): a step is forecast while the accumulated relative size of the forecast's
  highest-order term, sum |last term| / sum |forecast| (fp32, summed over the world group like TeaCache's
  relative L1), stays under `threshold`; at most `max_skip` forecasts in a row. One host sync per decision.
  With `error` ("-err") the size is that of the first term left out (order + 1, from one more computed
  step): the forecast's own error estimate.
The last `tail` steps (fixed and adaptive) and refresh steps always compute; a non-finite size computes.
"""

import math
from dataclasses import dataclass

import torch

from videosys.cache.hooks import StepCache
from videosys.cache.registry import NeedsCalibration, register

BASES = ("newton", "taylor")


@dataclass
class ForecastConfig:
    order: int = 1  # polynomial degree of the forecast
    interval: int = 0  # fixed schedule: compute every `interval` steps after warm-up; 0: adaptive
    threshold: float = 0.2  # adaptive: accumulated relative size of the highest-order term that forces a compute
    warmup: int = 3  # first steps always computed (the prediction changes fastest at high noise)
    max_skip: int = 9  # adaptive: forecasts in a row at most
    tail: int = 1  # last steps always computed (the final steps set the video's fine detail)
    basis: str = "newton"  # "newton" (exact polynomial extrapolation) or "taylor" (TaylorSeer's factors)
    error: bool = False  # adaptive: size the first term left out (the forecast's error estimate), not the last one
    steps: tuple = ()  # calibrated: the steps that compute (the rest forecast), for runs of `grid` steps
    grid: int = 0  # the number of inference steps `steps` was calibrated for

    def __post_init__(self):
        self.steps = tuple(sorted({int(s) for s in self.steps}))
        if self.steps and (self.steps[0] != 0 or self.steps[-1] >= self.grid):
            raise ValueError(f"forecast steps must include step 0 and lie below grid={self.grid} (the step count they "
                             f"were calibrated for), got steps={self.steps}")
        if self.order < 0 or self.interval < 0 or self.warmup < 1 or self.max_skip < 1 or self.tail < 1:
            raise ValueError(f"forecast needs order >= 0, interval >= 0, warmup, max_skip, tail >= 1, got {self}")
        if self.threshold < 0:
            raise ValueError(f"forecast threshold must be >= 0, got {self.threshold}")
        if self.interval == 0 and self.order < 1:
            raise ValueError("the adaptive forecast (interval 0) needs order >= 1: its criterion is the order-th term")
        if self.basis not in BASES:
            raise ValueError(f"forecast basis must be one of {BASES}, got {self.basis!r}")

    @classmethod
    def for_model(cls, setting: dict | None = None, **overrides) -> "ForecastConfig":
        """Ours, not published: the same defaults for every family (measured on the demo model, docs/caches/forecast.md), or a
        family's own fields where it has some (its calibrated "schedules" are read by name: `forecast-s<K>`)."""
        fields = {k: v for k, v in (setting or {}).items() if k != "schedules"}
        return cls(**{**fields, **overrides})

    @classmethod
    def calibrated(cls, computes: int, setting: dict | None) -> "ForecastConfig":
        """The model's calibrated schedule computing `computes` steps (cache_settings "schedules": K -> (grid, steps))."""
        schedules = (setting or {}).get("schedules", {})
        if computes not in schedules:
            have = ", ".join(f"forecast-s{k}" for k in sorted(schedules)) or "none"
            raise NeedsCalibration("forecast", f"compute schedule for {computes} steps (calibrated here: {have})",
                                   '{"method": "forecast", "steps": [...], "grid": N}', flags=f" --computes {computes}")
        grid, steps = schedules[computes]
        return cls(steps=tuple(steps), grid=grid)

    @classmethod
    def from_name(cls, arg: str, setting: dict | None = None) -> "ForecastConfig | None":
        """"0.2" (adaptive threshold) or "i3" (fixed interval), optionally followed by "-o<order>",
        "-w<warmup>", "-m<max_skip>", "-t<tail>", "-err", "-taylor": "forecast-0.3", "forecast-i3-o2",
        "forecast-0.5-o2-m6-taylor"."""
        fields = {}
        parts = arg.split("-")
        if len(parts) == 1 and parts[0][:1] == "s" and parts[0][1:].isdigit():
            return cls.calibrated(int(parts[0][1:]), setting)
        try:
            head = parts[0]
            if head.startswith("i"):
                fields["interval"] = int(head[1:])
            else:
                fields["threshold"] = float(head)
            for part in parts[1:]:
                if part in BASES:
                    fields["basis"] = part
                elif part == "err":
                    fields["error"] = True
                elif part[:1] in ("o", "w", "m", "t"):
                    fields[{"o": "order", "w": "warmup", "m": "max_skip", "t": "tail"}[part[0]]] = int(part[1:])
                else:
                    return None
        except ValueError:
            return None
        return cls(**fields)


def newton_coefficients(steps: list[int], values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Divided differences f[x_n], f[x_n, x_n-1], ... of points given newest last (fp32)."""
    xs, column = steps[::-1], values[::-1]  # newest first
    coefficients = [column[0]]
    for j in range(1, len(xs)):
        column = [(column[m] - column[m + 1]) / (xs[m] - xs[m + j]) for m in range(len(column) - 1)]
        coefficients.append(column[0])
    return coefficients


class OutputForecast(StepCache):
    """StepCache: the step, the counts (no per-branch state: it acts on the guided prediction)."""

    group = None  # the world group of this step's call (every rank holds the whole prediction)
    dtype = torch.float32  # the model's prediction dtype (forecasts are cast back to it)

    def begin(self, timesteps: list[float], refresh_steps=()) -> None:
        super().begin(timesteps, refresh_steps)
        grid = self.config.grid
        if self.config.steps and timesteps and len(timesteps) != grid:
            raise ValueError(f"this forecast schedule was calibrated for {grid} steps, the run has {len(timesteps)}: "
                             f"run {grid} steps, or calibrate for {len(timesteps)} (python scripts/calibrate_teacache.py "
                             f"--method forecast --computes {len(self.config.steps)} --steps {len(timesteps)})")
        self.steps: list[int] = []  # computed step indices, newest last (at most order + 1)
        self.values: list[torch.Tensor] = []  # their predictions, fp32
        self.terms: list[torch.Tensor] = []  # the forecast's factors (Newton coefficients or Taylor factors)
        self.accumulated = 0.0
        self.since = 0  # forecasts since the last computed step

    # ---- the forecast ---------------------------------------------------------------------------
    def term(self, j: int) -> torch.Tensor:
        """The j-th term of the forecast at this step."""
        if self.config.basis == "taylor":
            k = self.step - self.steps[-1]
            return self.terms[j] * (k ** j / math.factorial(j))
        weight = 1.0
        for m in range(j):  # prod (x - x_{n-m}) over the newest j nodes
            weight *= self.step - self.steps[-1 - m]
        return self.terms[j] * weight

    @property
    def kept(self) -> int:
        """Terms kept: order + 1, one more when the adaptive criterion sizes the first term left out."""
        c = self.config
        return c.order + 1 + (c.error and not c.interval)

    def remember(self, out: torch.Tensor) -> None:
        value, self.dtype = out.float(), out.dtype
        if self.config.basis == "taylor":
            factors = [value]
            if self.terms:
                gap = self.step - self.steps[-1]
                for j in range(min(self.kept - 1, len(self.terms))):
                    factors.append((factors[j] - self.terms[j]) / gap)
            self.terms = factors
            self.steps, self.values = [self.step], []
            return
        self.steps = (self.steps + [self.step])[-self.kept:]
        self.values = (self.values + [value])[-self.kept:]
        self.terms = newton_coefficients(self.steps, self.values)

    def must_compute(self) -> bool:
        c = self.config
        if not self.terms or self.step in self.refresh_steps:
            return True
        if c.steps:
            return self.step in c.steps
        return self.step < c.warmup or self.step >= self.num_steps - c.tail

    def decide(self, terms: list[torch.Tensor], forecast: torch.Tensor) -> bool:
        """True = compute this step."""
        c = self.config
        if c.steps:
            return False  # must_compute said: not one of the calibrated steps
        if c.interval:
            return (self.step - c.warmup) % c.interval == 0
        if len(terms) < 2 or self.since >= c.max_skip:
            return True
        from videosys.core.comm import all_reduce_sum

        sums = torch.stack([torch.sum(terms[-1].abs(), dtype=torch.float32),
                            torch.sum(forecast.abs(), dtype=torch.float32)])
        sums = all_reduce_sum(sums, self.group)
        size = float(sums[0] / sums[1])  # one host sync: the decision drives control flow
        if not math.isfinite(size):
            return True
        self.accumulated += size
        return self.accumulated > c.threshold

    def step_output(self, compute, group=None) -> torch.Tensor:
        """The step-output hook: the model's prediction on a computed step, else the forecast."""
        self.group = group
        forecast = None
        if not self.must_compute():
            terms = [self.term(j) for j in range(len(self.terms))]
            used = terms[: self.config.order + 1]  # with `error`, terms[-1] is the first term left out
            forecast = sum(used[1:], used[0])
            if self.decide(terms, forecast):
                forecast = None
        if forecast is None:
            out = compute()
            self.remember(out)
            self.accumulated, self.since = 0.0, 0
            self.computed += 1
            return out
        self.since += 1
        self.reused_steps.append(self.step)
        return forecast.to(self.dtype)

    def postfix(self) -> str:
        return f"forecast {len(self.reused_steps)}/{self.computed + len(self.reused_steps)}"


register("forecast", ForecastConfig, OutputForecast, for_model=ForecastConfig.for_model,
         parse=ForecastConfig.from_name, names=("forecast",),
         # from ~1.5x to ~2.5x on the demo model (docs/benchmarks.md): fixed intervals 2 .. 5 and adaptive thresholds between them
         sweep=("forecast-i2", "forecast-0.2", "forecast-0.3-m2", "forecast-i3", "forecast-0.5", "forecast-i4",
                "forecast-0.7", "forecast-i5", "forecast-s27", "forecast-s25", "forecast-s19", "forecast-s16", "forecast-s13",
                "forecast-s10"),  # the calibrated ones where the model has them
         syntax="forecast-<threshold>|forecast-i<interval>[-o<order>][-w<warmup>][-t<tail>]|forecast-s<computes>",
         reuses_last_step=False)  # the last `tail` (>= 1) steps always compute
