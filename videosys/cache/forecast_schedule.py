"""Calibrating the output forecast's schedule: which K of a run's N steps compute (videosys/cache/forecast.py,
`forecast-s<K>`), for one model and step count.

On uncached generations of a few prompts at one seed (report other seeds: `videosys bench`):
1. Open loop. Each step's prediction (the guided model output) is recorded once. Forecasting steps b+1 .. c-1 from
   the computed steps a < b (order 1: the line through them) costs the squared error against the recorded
   predictions, relative to their size; dynamic programming over the last two computed steps finds the K-step
   schedule of least total cost (steps 0 and 1 compute: the line needs two points).
2. Closed loop. A forecast's error changes the latents every later step sees, which the open loop cannot know, so
   its optimum is one start; evenly spaced steps, with or without diffusers' TaylorSeer-lite warm-up (steps 0-2), are
   the others. From the best of them, each computed step but the first is moved by -2..+2 in turn and kept where
   the videos' mean PSNR against the uncached ones rises, until no move helps or `rounds` sweeps are done. The
   prompts should span the model's range (the command spreads them over the set): a schedule searched on 6 prompts
   of two colours of the demo set kept 2 dB more than TaylorSeer lite on them and 1 dB less on the others.
On the demo model (8 prompts spread over the set, seed 0; docs/caches/forecast.md) the open loop alone kept 34.2 dB
at 13 of 50 steps and the closed loop 38.6, against 28.9 for diffusers' TaylorSeer-lite layout (the same forecast).
"""

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from videosys.cache.forecast import ForecastConfig
from videosys.cache.hooks import StepCache
from videosys.cache.registry import register
from videosys.eval.metrics import psnr_frames


@dataclass
class ForecastRecorderConfig:
    """No settings: the recorder computes every step."""


class ForecastRecorder(StepCache):
    """At the step output: computes every step and keeps its prediction (fp32, on the device) for one generation."""

    def begin(self, timesteps, refresh_steps=()) -> None:
        super().begin(timesteps, refresh_steps)
        self.predictions: list[torch.Tensor] = []

    def step_output(self, compute, group=None) -> torch.Tensor:
        out = compute()
        self.predictions.append(out.detach().float())
        self.computed += 1
        return out


register("forecast-recorder", ForecastRecorderConfig, ForecastRecorder,
         for_model=lambda setting=None: ForecastRecorderConfig(), reuses_last_step=False)  # never forecasts


def line_costs(predictions: list[torch.Tensor]) -> np.ndarray:
    """cost[a, b, s]: relative squared error at step s > b of the line through the predictions of steps a < b."""
    v = torch.stack([p.flatten() for p in predictions]).double()  # (N, D)
    n = len(v)
    size = (v ** 2).sum(1).clamp_min(1e-30)
    cost = np.zeros((n, n, n))
    for b in range(1, n - 1):
        later = torch.arange(1, n - b, dtype=torch.float64, device=v.device)  # s - b for s = b+1 .. n-1
        for a in range(b):
            slope = (v[b] - v[a]) / (b - a)
            error = ((v[b][None] + later[:, None] * slope[None] - v[b + 1:]) ** 2).sum(1) / size[b + 1:]
            cost[a, b, b + 1:] = error.cpu().numpy()
    return cost


def open_loop_schedule(cost: np.ndarray, computes: int) -> list[int]:
    """The `computes` steps (0 and 1 among them) whose forecasts of the others cost least in total."""
    n = cost.shape[0]
    if not 2 <= computes <= n:
        raise ValueError(f"a schedule computes 2 .. {n} of {n} steps, got {computes}")
    running = np.cumsum(cost, axis=2)  # running[a, b, s] = cost of forecasting steps ..s from (a, b)

    def gap(a, b, c):  # forecast steps b+1 .. c-1 from (a, b)
        return running[a, b, c - 1] - running[a, b, b] if c > b + 1 else 0.0

    best = {(0, 1): (0.0, [0, 1])}  # (last two computed steps) -> (cost so far, steps)
    for _ in range(computes - 2):
        ahead = {}
        for (a, b), (total, steps) in best.items():
            for c in range(b + 1, n):
                candidate = total + gap(a, b, c)
                if candidate < ahead.get((b, c), (np.inf,))[0]:
                    ahead[(b, c)] = (candidate, steps + [c])
        best = ahead
    return min(((total + gap(a, b, n), steps) for (a, b), (total, steps) in best.items()), key=lambda x: x[0])[1]


def _frames(video) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) in [0, 1]."""
    return torch.as_tensor(np.asarray(video)).float().div(255).permute(0, 3, 1, 2)


def calibrate_forecast(pipeline, prompts: list[str], computes: list[int], seed: int = 0, rounds: int = 4,
                       progress: bool = True, **generate_kwargs) -> dict:
    """{"grid": the step count, "schedules": K -> {"steps", "psnr", "start", "start_psnr"}} (PSNR: mean over the
    prompts against their uncached videos; the starts' before the search). The pipeline's caches are put back."""
    if pipeline.parallel.world_size != 1:
        raise ValueError("calibrate runs in one process (num_gpus=1)")
    transformer = pipeline.transformer
    saved = dict(transformer.caches)
    transformer.disable_cache()
    try:
        transformer.enable_cache(ForecastRecorderConfig())
        recorder = transformer.active_cache("forecast-recorder")
        references, cost = [], 0.0
        for prompt in tqdm(prompts, desc="recording", disable=not progress):
            references.append(_frames(pipeline.generate(prompt, seed=seed, **generate_kwargs).video[0]))
            cost = cost + line_costs(recorder.predictions)
        grid = recorder.num_steps
        transformer.disable_cache()

        def score(steps: list[int]) -> float:
            transformer.disable_cache()
            transformer.enable_cache(ForecastConfig(steps=tuple(steps), grid=grid))
            videos = [pipeline.generate(p, seed=seed, **generate_kwargs).video[0] for p in prompts]
            return float(np.mean([psnr_frames(_frames(v), r).mean().item() for v, r in zip(videos, references)]))

        results = {}
        for k in computes:
            starts = {"open loop": open_loop_schedule(cost, k),
                      "even": sorted({int(round(x)) for x in np.linspace(0, grid - 1, k)}),
                      # diffusers' TaylorSeer-lite layout: steps 0-2, then evenly spaced from step 4 to the last
                      "warm-up, even": [0, 1, 2, *sorted({int(round(x)) for x in np.linspace(4, grid - 1, k - 3)})]}
            scored = {name: score(steps) for name, steps in starts.items() if len(steps) == k and steps[-1] < grid}
            origin = max(scored, key=scored.get)
            steps, best = list(starts[origin]), scored[origin]
            bar = tqdm(total=rounds, desc=f"searching {k} of {grid} steps", disable=not progress)
            for _ in range(rounds):
                moved = False
                for i in range(1, len(steps)):
                    for shift in (-2, -1, 1, 2):
                        candidate = sorted(set(steps[:i] + [steps[i] + shift] + steps[i + 1:]))
                        if len(candidate) < k or candidate[0] != 0 or candidate[-1] >= grid:
                            continue
                        psnr = score(candidate)
                        if psnr > best + 0.01:  # below that: noise of the float summation order
                            best, steps, moved = psnr, candidate, True
                            bar.set_postfix(psnr=f"{best:.2f}")
                bar.update()
                if not moved:
                    break
            bar.close()
            results[k] = {"steps": steps, "psnr": best, "start": origin, "start_psnr": scored}
        return {"grid": grid, "schedules": results}
    finally:
        transformer.disable_cache()
        transformer.caches.update(saved)
