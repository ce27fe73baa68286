"""FreeInit (Wu et al., arXiv 2312.07537): re-initialise the noise's low frequencies between sampling runs.

A generation runs the sampler `iters` times. After each run the clean latent is diffused back to
the start of sampling with the run's *initial* noise, its spatio-temporal low-pass part is kept,
the high-pass part is replaced by fresh noise, and sampling starts again:

    z_T   = diffuse(z_0, initial_noise)
    z_new = ifft(LPF * fft(z_T) + (1 - LPF) * fft(fresh_noise))     (over frames, height, width)

The filters are those of the authors' freeinit_utils.py (butterworth, gaussian, ideal, box) with
their normalised stop frequencies d_s (space) and d_t (time); the defaults are diffusers'
`enable_free_init` (3 iterations, butterworth of order 4, d_s = d_t = 0.25).

"Diffuse back" per scheduler family (`diffuse`):
- DDPM-type schedulers (DDIM, DPM-Solver, PNDM): `scheduler.add_noise` at t = num_train_timesteps - 1,
  as the authors and diffusers do.
- Euler-ancestral (sigma space, x = x0 + sigma * noise): x0 + sigma_0 * noise at the schedule's first
  sigma (the noise level sampling starts from), divided by sqrt(sigma_0^2 + 1). That is the variance-preserving form the filter mixes in: mixing the sigma-scaled
  latent with unit fresh noise, as a literal port of the reference would, gives high frequencies 1/sigma
  of their due. The mixed latent is scaled back by the scheduler's `init_noise_sigma`, like the first noise.
- Rectified flow and diffusers' flow matching (x_t = (1 - s) x0 + s noise): the sampler starts at s = 1, where the clean latent
  would vanish altogether; we diffuse to the s whose signal-to-noise ratio equals the reference's
  DDPM t = 999 under the DDPM linear schedule (betas 1e-4..0.02): s = 0.99368 (t = 993.68 of 1000).
"""

import math
from dataclasses import dataclass

import torch

FILTERS = ("butterworth", "gaussian", "ideal", "box")

# The DDPM linear schedule's alpha_bar at t = 999 (betas 1e-4..0.02 over 1000 steps): the noise level
# the reference diffuses to, expressed for rectified flow through an equal signal-to-noise ratio.
_ALPHA_BAR_999 = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
FLOW_NOISE_LEVEL = 1 / (1 + math.sqrt(_ALPHA_BAR_999 / (1 - _ALPHA_BAR_999)))


@dataclass
class FreeInitConfig:
    iters: int = 3  # sampling runs in all (1 = plain sampling); diffusers' default
    method: str = "butterworth"
    order: int = 4  # butterworth only: large ~ ideal, small ~ gaussian
    spatial_stop_frequency: float = 0.25  # d_s, normalised (0..1)
    temporal_stop_frequency: float = 0.25  # d_t
    fast_sampling: bool = False  # coarse-to-fine: run k gets steps * k / iters steps (the paper's speed-up)
    cache_iters: int | None = None  # caches on only in the first k runs (None: in every run)

    def __post_init__(self):
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"freeinit iters must be an integer >= 1, got {self.iters!r}")
        if self.method not in FILTERS:
            raise ValueError(f"freeinit method must be one of {FILTERS}, got {self.method!r}")
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"freeinit order must be an integer >= 1, got {self.order!r}")
        for name in ("spatial_stop_frequency", "temporal_stop_frequency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"freeinit {name} must be a number in [0, 1], got {value!r}")
        if self.cache_iters is not None and (isinstance(self.cache_iters, bool) or not isinstance(self.cache_iters, int)
                                             or self.cache_iters < 0):
            raise ValueError(f"freeinit cache_iters must be None or an integer >= 0, got {self.cache_iters!r}")

    def steps(self, iteration: int, num_steps: int) -> int:
        """Sampling steps of run `iteration` (0-based)."""
        if not self.fast_sampling:
            return num_steps
        return max(1, int(num_steps / self.iters * (iteration + 1)))

    def caches_on(self, iteration: int) -> bool:
        return self.cache_iters is None or iteration < self.cache_iters


def low_pass_filter(frames: int, height: int, width: int, method: str = "butterworth", order: int = 4,
                    d_s: float = 0.25, d_t: float = 0.25) -> torch.Tensor:
    """(T, H, W) float32 low-pass mask in fftshift-ed coordinates, as the authors define each filter."""
    if d_s == 0 or d_t == 0:
        return torch.zeros(frames, height, width)
    if method == "box":  # the authors' "approximated ideal" filter: a centred box
        mask = torch.zeros(frames, height, width)
        rs, rt = round(int(height // 2) * d_s), round(frames // 2 * d_t)
        ct, ch, cw = frames // 2, height // 2, width // 2
        mask[ct - rt:ct + rt, ch - rs:ch + rs, cw - rs:cw + rs] = 1.0
        return mask
    # squared normalised distance from the centre, time stretched by d_s / d_t; float64 like Python's floats
    t = ((d_s / d_t) * (2 * torch.arange(frames, dtype=torch.float64) / frames - 1)) ** 2
    h = (2 * torch.arange(height, dtype=torch.float64) / height - 1) ** 2
    w = (2 * torch.arange(width, dtype=torch.float64) / width - 1) ** 2
    d2 = t[:, None, None] + h[None, :, None] + w[None, None, :]
    if method == "butterworth":
        mask = 1 / (1 + (d2 / d_s**2) ** order)
    elif method == "gaussian":
        mask = torch.exp(-1 / (2 * d_s**2) * d2)
    elif method == "ideal":
        mask = (d2 <= d_s * 2).double()  # the authors compare with d_s * 2 (not d_s ** 2); kept as published
    else:
        raise ValueError(f"unknown FreeInit filter {method!r}; choose from {FILTERS}")
    return mask.float()


def frequency_mix(x: torch.Tensor, noise: torch.Tensor, lpf: torch.Tensor) -> torch.Tensor:
    """Low frequencies of x, high frequencies of noise, over the last three dims (T, H, W); float32."""
    dims = (-3, -2, -1)
    x_freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=dims), dim=dims)
    noise_freq = torch.fft.fftshift(torch.fft.fftn(noise.float(), dim=dims), dim=dims)
    mixed = x_freq * lpf + noise_freq * (1 - lpf)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real


def diffuse(scheduler, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The clean `latents` taken back to the noise level sampling starts from (see the module docstring)."""
    from videosys.schedulers.rectified_flow import RectifiedFlowScheduler

    b = latents.shape[0]
    if isinstance(scheduler, RectifiedFlowScheduler):
        t = torch.full((b,), FLOW_NOISE_LEVEL * scheduler.num_timesteps, device=latents.device)
        return scheduler.add_noise(latents, noise, t)
    if type(scheduler).__name__.startswith("FlowMatch"):  # diffusers' flow matching: the same x_t, sigma = s
        return (1 - FLOW_NOISE_LEVEL) * latents + FLOW_NOISE_LEVEL * noise
    if type(scheduler).__name__.startswith("EulerAncestral"):
        sigma = float(scheduler.sigmas[0])
        return (latents + sigma * noise) / math.sqrt(sigma**2 + 1)
    t = torch.full((b,), scheduler.config.num_train_timesteps - 1, dtype=torch.long, device=latents.device)
    return scheduler.add_noise(latents, noise, t)


def reinitialize(latents: torch.Tensor, initial_noise: torch.Tensor, fresh_noise: torch.Tensor, lpf: torch.Tensor,
                 scheduler, frame_dim: int = 2) -> torch.Tensor:
    """The next run's starting latents from this run's clean latents (frames at `frame_dim`, H, W last)."""
    z_t = diffuse(scheduler, latents, initial_noise)
    # bring (.., T, H, W) last for the FFT (CogVideoX keeps frames before channels), then back
    mixed = frequency_mix(z_t.movedim(frame_dim, -3), fresh_noise.movedim(frame_dim, -3), lpf).movedim(-3, frame_dim)
    return (mixed * float(getattr(scheduler, "init_noise_sigma", 1.0))).to(latents.dtype)


def sample(pipeline, latents: torch.Tensor, run, num_steps: int, seed: int, frame_dim: int = 2) -> torch.Tensor:
    """The family's sampler `run(latents, num_steps) -> clean latents`, once, or FreeInit's `iters` times.

    `latents` are the first run's starting latents (unit noise x the scheduler's init_noise_sigma). Every
    rank holds the whole latent, and the fresh noise comes from a CPU generator seeded from `seed`, so the
    re-initialisation is the same on every rank of a parallel run (no gather needed). Each run begins the
    caches anew (the loop calls cache_begin); with `cache_iters` the caches are off after the first k runs.
    Per-run timings, steps and cache statistics go to `pipeline.run_stats["freeinit"]`.
    """
    import time

    config = pipeline.config.freeinit_config()
    if config is None:
        return run(latents, num_steps)
    transformer, scheduler = pipeline.transformer, pipeline.scheduler
    initial = latents.float() / float(getattr(scheduler, "init_noise_sigma", 1.0))
    fresh = torch.Generator("cpu").manual_seed(int(seed) + 1_000_003)  # apart from the seed's own draws
    t, h, w = (latents.shape[frame_dim], *latents.shape[-2:])
    lpf = low_pass_filter(t, h, w, config.method, config.order, config.spatial_stop_frequency,
                          config.temporal_stop_frequency).to(latents.device)
    caches = dict(transformer.caches)
    runs = []
    try:
        for k in range(config.iters):
            if k:
                noise = torch.randn(latents.shape, generator=fresh, dtype=torch.float32).to(latents.device)
                latents = reinitialize(latents, initial, noise, lpf, scheduler, frame_dim)
            transformer.caches.clear()
            if config.caches_on(k):
                transformer.caches.update(caches)
            pipeline.progress_label = f"freeinit {k + 1}/{config.iters}"
            steps = config.steps(k, num_steps)
            start = time.perf_counter()
            latents = run(latents, steps)
            if latents.device.type == "cuda":  # one sync per run, for its timing
                torch.cuda.synchronize(latents.device)
            runs.append({"steps": pipeline.denoised_steps, "seconds": time.perf_counter() - start,
                         **transformer.cache_stats()})
    finally:
        transformer.caches.clear()
        transformer.caches.update(caches)
        pipeline.progress_label = ""
    pipeline.run_stats["freeinit"] = {"iters": config.iters, "runs": runs}
    return latents
