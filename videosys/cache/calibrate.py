"""TeaCache coefficients for any model: record uncached generations, fit the rescaling polynomial.

The published polynomials (the families' cache_settings.py) were fitted by the reference over every step
of a prompt set: x = relative L1 change of the model's indicator between consecutive transformer
calls, y = relative L1 change of the transformer's output, `numpy.polyfit(x, y, 4)`. A model
without published coefficients (a fine-tune, a new family, the demo model) gets its own:

    from videosys.cache.calibrate import calibrate
    result = calibrate(engine.pipeline, prompts, seeds=[0])
    engine.set_cache(TeaCacheConfig(threshold=0.1, coefficients=result.coefficients))

or `python scripts/calibrate_teacache.py --model <family> --preset demo`. The recorder is a registered
cache method ("teacache-recorder") at the block-stack hook point, so it reads the very indicator
TeaCache reads. One process, cond and uncond in one batch (as the reference measured); the output
distance is over the whole batched output (both CFG halves), as the indicator's is. A reconstruction
pipeline takes videos instead of prompts; where a step runs several DiT calls (frame windows x tiles),
each call is paired with the same part's call one step earlier (hooks.py: per-part state).

MagCache's magnitude ratios likewise: `calibrate_magcache(engine.pipeline, prompts)` (`--method magcache`;
the recorder "magcache-recorder") records, per step, the mean over tokens of |r_i| / |r_{i-1}| for the
residual r the whole block stack adds, averaged over the generations.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from videosys.cache.hooks import BlockStack, Cache
from videosys.cache.registry import register
from videosys.cache.teacache import last_peak, relative_l1


@dataclass
class TeaCacheRecorderConfig:
    """No settings: the recorder never skips."""


@dataclass
class TeaCacheRecorder(Cache):
    """At the block stack: runs it every step and keeps the indicator's relative L1 change for every call
    after a generation's first; `record_output` (a forward hook of the transformer, set by `calibrate`)
    keeps the output's. The distances stay on the device until `points()`: no host sync per step."""

    config: TeaCacheRecorderConfig = field(default_factory=TeaCacheRecorderConfig)
    xs: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    indicators: dict = field(default_factory=dict)  # the last call's indicator, per state (branch / part)
    outputs: dict = field(default_factory=dict)  # its output

    def begin(self, timesteps, refresh_steps=()) -> None:  # it computes every step anyway
        self.indicators, self.outputs = {}, {}  # consecutive calls of one generation only

    def stack(self, stack: BlockStack) -> tuple:
        indicator = stack.indicator().detach()
        if stack.branch in self.indicators:
            self.xs.append(relative_l1(indicator, self.indicators[stack.branch], group=stack.group).detach())
        self.indicators[stack.branch] = indicator
        return stack.run(*stack.streams)

    def record_output(self, output: torch.Tensor, state: str = "batch") -> None:
        output = output.detach()
        if state in self.outputs:
            self.ys.append(relative_l1(output, self.outputs[state]))
        self.outputs[state] = output

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self.xs) != len(self.ys):
            raise RuntimeError(f"{len(self.xs)} indicator changes but {len(self.ys)} output changes: the model "
                               "must pass its block-stack hook point once per forward")
        if not self.xs:
            return np.zeros(0), np.zeros(0)
        return (torch.stack(self.xs).double().cpu().numpy(), torch.stack(self.ys).double().cpu().numpy())

    def stats(self) -> dict:
        return {"calibration_points": len(self.ys)}

    def postfix(self) -> str:
        return f"calibrating, {len(self.ys)} points"


register("teacache-recorder", TeaCacheRecorderConfig, TeaCacheRecorder,
         for_model=lambda setting=None: TeaCacheRecorderConfig(), reuses_last_step=False)  # never skips


@dataclass
class Calibration:
    coefficients: tuple[float, ...]  # numpy.poly1d order (highest power first), as TeaCacheConfig takes them
    x: np.ndarray  # relative L1 change of the indicator, one per recorded call
    y: np.ndarray  # relative L1 change of the output

    def r2(self, coefficients=None) -> float:
        """Coefficient of determination of a polynomial (default: the fitted one) on the recorded points,
        evaluated as TeaCache evaluates it (at min(x, last peak): teacache.py)."""
        coefficients = tuple(self.coefficients if coefficients is None else coefficients)
        predicted = np.polyval(coefficients, np.minimum(self.x, last_peak(coefficients)))
        total = float(((self.y - self.y.mean()) ** 2).sum())
        return 1.0 - float(((self.y - predicted) ** 2).sum()) / total if total > 0 else float("nan")

    def summary(self) -> dict:
        return {"coefficients": list(self.coefficients), "points": len(self.x), "r2": self.r2(),
                "x_range": [float(self.x.min()), float(self.x.max())],
                "y_range": [float(self.y.min()), float(self.y.max())]}


def fit(x, y, degree: int = 4) -> tuple[float, ...]:
    """numpy.polyfit(x, y, degree), as the reference fitted the published polynomials."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) <= degree:
        raise ValueError(f"a degree-{degree} fit needs more than {degree} points, got {len(x)}: "
                         "use more prompts, seeds or steps")
    return tuple(float(c) for c in np.polyfit(x, y, degree))


def _record(pipeline, config, name: str, prompts, seeds, progress: bool, generate_kwargs, output_hook=None,
            transformer=None):
    """Generate every (prompt, seed) uncached with recorder `config` on (a reconstruction pipeline: reconstruct
    every (video, seed)); the recorder. Caches are put back. `transformer`: the model whose calls are recorded
    (default: the pipeline's; one of several models the pipeline runs, e.g. one of Wan2.2's two experts, records
    only its own calls)."""
    if pipeline.parallel.world_size != 1:
        raise ValueError("calibrate runs in one process (num_gpus=1): the distances are those of the whole batch")
    transformer = pipeline.transformer if transformer is None else transformer
    saved = dict(transformer.caches)
    transformer.disable_cache()
    transformer.enable_cache(config)
    recorder = transformer.active_cache(name)
    handle = None
    if output_hook is not None:
        handle = transformer.register_forward_hook(
            lambda module, args, out: output_hook(recorder, out if torch.is_tensor(out) else out[0],
                                                  transformer.cache_state))
    jobs = [(p, s) for p in prompts for s in seeds]
    run = pipeline.reconstruct if hasattr(pipeline, "reconstruct") else pipeline.generate
    try:
        for prompt, seed in tqdm(jobs, desc="calibrating", disable=not progress):
            run(prompt, seed=seed, **generate_kwargs)
    finally:
        if handle is not None:
            handle.remove()
        transformer.disable_cache()
        transformer.caches.update(saved)
    return recorder


def calibrate(pipeline, prompts: list[str], seeds=(0,), degree: int = 4, progress: bool = True, transformer=None,
              **generate_kwargs) -> Calibration:
    """Generate every (prompt, seed) without caches while recording, then fit. The pipeline's caches are
    put back afterwards. `generate_kwargs` go to `pipeline.generate` (steps, frames, size...); a reconstruction
    pipeline takes videos as `prompts` and `pipeline.reconstruct` gets them. `transformer`: see `_record`."""
    recorder = _record(pipeline, TeaCacheRecorderConfig(), "teacache-recorder", prompts, seeds, progress,
                       generate_kwargs, output_hook=lambda rec, out, state: rec.record_output(out, state),
                       transformer=transformer)
    x, y = recorder.points()
    return Calibration(fit(x, y, degree), x, y)


# ---- MagCache -------------------------------------------------------------------------------------

@dataclass
class MagCacheRecorderConfig:
    """No settings: the recorder never skips."""


def magnitude_ratio(residual: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """mean over tokens of |r| / |r_prev| (L2 over the last dim, in fp32), as the MagCache authors measure it."""
    return (residual.float().norm(dim=-1) / previous.float().norm(dim=-1).clamp_min(1e-8)).mean()


@dataclass
class MagCacheRecorder(Cache):
    """At the block stack: runs it every step and keeps, per step index, the magnitude ratio of the residual
    the stack adds (first stream) against the previous step's. On the device until `ratios()`."""

    config: MagCacheRecorderConfig = field(default_factory=MagCacheRecorderConfig)
    per_step: dict = field(default_factory=dict)  # step index -> [ratio tensors, one per generation and part]
    residuals: dict = field(default_factory=dict)  # the last call's residual, per state (branch / part)
    step: int = 0

    num_steps: int = 0  # of the last generation

    def begin(self, timesteps, refresh_steps=()) -> None:
        self.residuals = {}
        self.num_steps = len(timesteps)

    def set_step(self, index: int, timestep: float) -> None:
        self.step = index

    def stack(self, stack: BlockStack) -> tuple:
        out = stack.run(*stack.streams)
        residual = (out[0] - stack.streams[0]).detach()
        previous = self.residuals.get(stack.branch)
        if previous is not None and previous.shape == residual.shape:
            self.per_step.setdefault(self.step, []).append(magnitude_ratio(residual, previous))
        self.residuals[stack.branch] = residual
        return out

    def ratios(self) -> tuple[float, ...]:
        """One per step of the generation: the mean ratio of each step over the generations, 1.0 on the steps
        with none (step 0; a model that runs only some steps, as one of Wan2.2's experts, on the others')."""
        steps = sorted(self.per_step)
        if not steps:
            raise RuntimeError("no magnitude ratios recorded: the model never passed its block-stack hook twice")
        means = dict(zip(steps, torch.stack([torch.stack(self.per_step[i]).mean() for i in steps]).double().cpu()
                         .tolist()))
        return tuple(means.get(i, 1.0) for i in range(max(self.num_steps, steps[-1] + 1)))

    def stats(self) -> dict:
        return {"calibration_steps": len(self.per_step)}


register("magcache-recorder", MagCacheRecorderConfig, MagCacheRecorder,
         for_model=lambda setting=None: MagCacheRecorderConfig(), reuses_last_step=False)  # never skips


def calibrate_magcache(pipeline, prompts: list[str], seeds=(0,), progress: bool = True, transformer=None,
                       **generate_kwargs) -> tuple[float, ...]:
    """MagCache's magnitude ratios for this model and step count (MagCacheConfig(ratios=...)). `transformer`: see
    `_record`."""
    recorder = _record(pipeline, MagCacheRecorderConfig(), "magcache-recorder", prompts, seeds, progress,
                       generate_kwargs, transformer=transformer)
    return recorder.ratios()
