"""FasterCache (arXiv 2410.19355): dynamic feature reuse and CFG-Cache.

Dynamic feature reuse (module hook point). Inside a timestep window (lo < t < hi, strict) a
self-attention computes only on steps whose index is a multiple of `every`; between, its output
is extrapolated from its last two *computed* outputs A1 (newest) and A2:
    A_t = A1 + w(t) * (A1 - A2),
w ramping from 0 at the first step to 1 at the last (the paper: w "gradually increases from 0 to 1
as inference progresses"; a constant `weight` overrides it). A module with fewer than two usable
computed outputs computes. Spatial, temporal and full (3D) self-attention; cross-attention and
MLPs are left alone (as in the paper and diffusers).

CFG-Cache (CFG branch hook point). Inside its window, the uncond branch runs only on model calls whose
count (0-based, per generation) is a multiple of `every` (and on the first): the step index when every step
calls the model. Counting calls (as the authors' scripts do) keeps the deltas refreshed every N-th call next to
a method that skips whole steps (after its warm-up forecast-i2 runs the model on odd steps only: by step
index, "uncond on even steps" would never run it again). On those full steps the difference (uncond - cond)
is split with a 2D FFT over the last two (H, W) axes and a circular low-pass mask
(radius min(H, W) // 5 around the shifted spectrum's centre) into a low- and a high-frequency
delta. On cond-only steps uncond = IFFT(FFT(cond) + w_low * d_low + w_high * d_high), w_low =
alpha_low inside the low window (else 1), w_high = alpha_high inside the high window (else 1):
early steps amplify the low-frequency (structure) bias, late steps the high-frequency (detail) one.

Where diffusers 0.42.1 differs (tests/test_fastercache.py shows each difference):
- it multiplies its stored deltas by the weight in place on every skipped step, so the weight
  compounds (alpha ** k on the k-th skipped step in a row); `compound=True` reproduces that;
- it skips attention only on cond-only steps (a full [uncond; cond] batch always computes), and
  extrapolates from the last two *calls*, one of which may be an extrapolation itself;
- its default attention weight is a constant 0.5.
Decisions come from the step index, the timestep and tensor shapes (host values alike on every
rank), so CFG-parallel and sequence-parallel ranks agree without talking; the skipped uncond
rank runs no forward and so joins none of its collectives.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch

from videosys.cache.hooks import Cache, Site
from videosys.cache.registry import published, register

SELF_ATTENTION = {"spatial": "spatial", "full": "spatial", "temporal": "temporal"}  # site kind -> setting

# Defaults: diffusers 0.42.1 FasterCacheConfig (hooks/faster_cache.py; reference/acceleration.md) for every
# family: spatial skip 2 in (-1, 681), temporal off, uncond every 5 in (-1, 641), alpha 1.1 / 1.1 in
# (99, 901) / (-1, 301). diffusers' 681 / 641 are the authors' Latte / CogVideoX start steps (16 / 18 of 50
# DDIM steps) as timesteps. The authors' scripts (Vchitect/FasterCache scripts/<model>/fastercache_sample_*.py)
# count 1-based model calls, with a phase per model, and compound their alphas (see `compound`):
#   Latte (50 DDIM):  attention (spatial + temporal) reused on even calls >= 16, weight 0.5; uncond skipped on
#                     calls >= 18 not divisible by 5; low x1.1 on calls < 45, high x1.1 after.
#   Open-Sora (30 rflow): attention on even calls > 7, weight 0.9 (call - 7) / 20 (a ramp); uncond skipped on
#                     calls > 11 not divisible by 5; low x1.15 on calls <= 25, high x1.15 on calls >= 20.
#   Open-Sora-Plan (150): attention on calls >= 45 not divisible by 3, weight 0.3; uncond skipped on calls
#                     >= 40 not divisible by 6; low x1.1 on calls <= 130, high x1.2 on calls >= 100.
#   CogVideoX (50):   attention on calls >= 18 not divisible by 3, weight 0.3; uncond skipped on calls >= 18 not
#                     divisible by 5; low x1.1 on calls <= 40, high x1.1 on calls >= 30.
# Those phases (and "not divisible by 3" = two of three reused) are not this config's "every N-th step from
# step 0" form, so every family ships diffusers' defaults; `weight=` / the windows reproduce the rest.
_DIFFUSERS = dict(spatial=((-1, 681), 2), temporal=None, uncond=((-1, 641), 5), alpha_low=1.1, alpha_high=1.1,
                  low_window=(99, 901), high_window=(-1, 301))
DEFAULTS = {key: _DIFFUSERS for key in ("latte", "open-sora", "open-sora-plan", "cogvideox")}


def _window_every(name: str, setting):
    if setting is None:
        return None
    (lo, hi), every = setting
    if int(every) < 1 or lo >= hi:
        raise ValueError(f"FasterCache {name}: need lo < hi and every >= 1, got window {(lo, hi)} every {every}")
    return (float(lo), float(hi)), int(every)


@dataclass
class FasterCacheConfig:
    """Windows are (lo, hi) in timestep values, strict on both ends; None = that part off."""

    spatial: tuple[tuple[float, float], int] | None = ((-1, 681), 2)  # spatial and full 3D self-attention
    temporal: tuple[tuple[float, float], int] | None = None
    weight: float | None = None  # extrapolation weight; None: the paper's ramp 0 -> 1 over the steps
    uncond: tuple[tuple[float, float], int] | None = ((-1, 641), 5)  # CFG-Cache: run uncond every N-th step
    alpha_low: float = 1.1
    alpha_high: float = 1.1
    low_window: tuple[float, float] = (99, 901)
    high_window: tuple[float, float] = (-1, 301)
    compound: bool = False  # diffusers' in-place update: the weight compounds over consecutive skipped steps

    def __post_init__(self):
        self.spatial = _window_every("spatial", self.spatial)
        self.temporal = _window_every("temporal", self.temporal)
        self.uncond = _window_every("uncond", self.uncond)
        self.low_window = tuple(float(v) for v in self.low_window)
        self.high_window = tuple(float(v) for v in self.high_window)
        if self.weight is not None:
            self.weight = float(self.weight)
        self.alpha_low, self.alpha_high = float(self.alpha_low), float(self.alpha_high)

    @classmethod
    def for_model(cls, models: str | tuple[str, ...], **overrides) -> "FasterCacheConfig":
        return cls(**{**published(DEFAULTS, models, "FasterCache defaults"), **overrides})

    @classmethod
    def from_name(cls, arg: str, models: tuple[str, ...]) -> "FasterCacheConfig | None":
        """"N" (of "fastercache-3"): attention every N-th step; "N-U": and uncond every U-th step; a
        trailing "t" ("3t", "3-4t") reuses temporal attention too, with the spatial window. "cfg" / "cfg-U":
        the CFG-Cache part alone (attention always computed), to combine with a step or module method."""
        if arg == "cfg" or arg.startswith("cfg-"):
            every = arg[4:] or None
            if every is not None and not (every.isdigit() and int(every) >= 1):
                return None
            base = cls.for_model(models)
            uncond = base.uncond if every is None else (base.uncond[0], int(every))
            return cls.for_model(models, spatial=None, temporal=None, uncond=uncond)
        temporal = arg.endswith("t")
        parts = (arg[:-1] if temporal else arg).split("-")
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            return None
        base = cls.for_model(models)
        spatial = (base.spatial[0], int(parts[0]))
        uncond = base.uncond if len(parts) == 1 else (base.uncond[0], int(parts[1]))
        return cls.for_model(models, spatial=spatial, uncond=uncond, temporal=spatial if temporal else None)


def in_window(window: tuple[float, float], t: float) -> bool:
    return window[0] < t < window[1]


def ramp_weight(index: int, num_steps: int) -> float:
    """The paper's w(t): 0 at the first step, 1 at the last, linear in the step index."""
    return index / (num_steps - 1) if num_steps > 1 else 0.0


_MASKS: dict[tuple, torch.Tensor] = {}


def low_pass_mask(height: int, width: int, device) -> torch.Tensor:
    """(H, W) bool: the disc of radius min(H, W) // 5 around the centre (W // 2, H // 2) of an fftshift-ed
    spectrum (the FasterCache authors' and diffusers' mask). Built once per shape and device."""
    key = (height, width, str(device))
    if key not in _MASKS:
        radius = min(height, width) // 5
        y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        _MASKS[key] = (((x - width // 2) ** 2 + (y - height // 2) ** 2) <= radius ** 2).to(device)
    return _MASKS[key]


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """The centred 2D spectrum over the last two axes (H, W), in fp32 / complex64."""
    return torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))


def split_frequencies(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) parts of x's centred spectrum; low + high = spectrum(x)."""
    s = spectrum(x)
    mask = low_pass_mask(*x.shape[-2:], x.device)
    return s * mask, s * ~mask


def from_spectrum(s: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifft2(torch.fft.ifftshift(s, dim=(-2, -1))).real


class FasterCache(Cache):
    """Per-transformer state: each self-attention's last two computed outputs; the CFG deltas."""

    def __init__(self, config: FasterCacheConfig):
        self.config = config
        self.begin([])

    @classmethod
    def acts_at(cls, config: FasterCacheConfig) -> frozenset:
        """Module calls where attention reuse is on, the CFG point where CFG-Cache is."""
        return frozenset(["module"] * (config.spatial is not None or config.temporal is not None)
                         + ["cfg"] * (config.uncond is not None))

    def begin(self, timesteps: list[float], refresh_steps=()) -> None:
        self.timesteps = [float(t) for t in timesteps]
        self.refresh_steps = frozenset(refresh_steps)
        self.step, self.t = 0, self.timesteps[0] if self.timesteps else 0.0
        self.history: dict[tuple, list] = {}  # module -> [older, newer] computed (output, branch)
        self.deltas: tuple[torch.Tensor, torch.Tensor] | None = None  # (low, high) spectra of uncond - cond
        self.counts: Counter = Counter()
        self.cond_ratio: int | None = None  # rows of a full-batch attention output per row of a cond-only one
        self.calls = 0  # model calls through the CFG point so far
        self.uncond_plan = [self._skips_uncond(i) for i in range(len(self.timesteps))]  # with a call every step
        # the last step that may extrapolate, per kind: after it the stored outputs are dropped (memory)
        self.last_reuse = {kind: max((i for i in range(len(self.timesteps)) if self.reuses(kind, i)), default=-1)
                           for kind in ("spatial", "temporal")}
        # the last step that may run cond-only, whatever the call count (call 1: any every > 1 skips there)
        self.last_skip = max((i for i in range(len(self.timesteps)) if self._skips_uncond(i, call=1)), default=-1)

    def set_step(self, index: int, timestep: float) -> None:
        self.step, self.t = index, float(timestep)

    # ---- dynamic feature reuse -------------------------------------------------------------------
    def reuses(self, kind: str, index: int | None = None) -> bool:
        """Whether attention of this setting kind ("spatial" / "temporal") is extrapolated at step `index`."""
        index = self.step if index is None else index
        setting = getattr(self.config, kind)
        if setting is None or index in self.refresh_steps:
            return False
        window, every = setting
        return index % every != 0 and in_window(window, self.timesteps[index])

    def weight(self) -> float:
        return self.config.weight if self.config.weight is not None else ramp_weight(self.step, len(self.timesteps))

    def module(self, site: Site, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        kind = SELF_ATTENTION.get(site.kind)
        if kind is None or getattr(self.config, kind) is None:
            return compute()
        key = (site.kind, site.block, site.index)
        past = self.history.get(key, [])
        if self.reuses(kind) and len(past) == 2:
            older, newer = (self._view(entry, site.branch) for entry in past)
            if older is not None and newer is not None:
                self.counts[f"{kind}_reused"] += 1
                return newer + self.weight() * (newer - older)
        out = compute()
        self.counts[f"{kind}_computed"] += 1
        if self.cond_ratio is None and site.branch == "cond" and past and past[-1][1] == "batch":
            self.cond_ratio = past[-1][0].shape[0] // out.shape[0]  # 2, or 1 on a CFG-parallel cond rank
        if self.step < self.last_reuse[kind]:
            self.history[key] = (past + [(out, site.branch)])[-2:]
        else:
            self.history.pop(key, None)
        return out

    def _view(self, entry: tuple[torch.Tensor, str], branch: str) -> torch.Tensor | None:
        """A computed output as the current call's branch sees it: itself, the cond part of a full batch
        ([uncond; cond] rows, or all of it where this rank runs only cond), or None (no uncond in a cond output)."""
        out, source = entry
        if source == branch:
            return out
        if branch == "cond" and source == "batch" and self.cond_ratio is not None:
            return out if self.cond_ratio == 1 else out.chunk(self.cond_ratio)[-1]
        return None

    # ---- CFG-Cache -------------------------------------------------------------------------------
    def _skips_uncond(self, index: int, call: int | None = None) -> bool:
        """Cond-only at step `index` as model call `call` (default: the index)?"""
        call = index if call is None else call
        if self.config.uncond is None or call == 0 or index in self.refresh_steps:
            return False
        window, every = self.config.uncond
        return call % every != 0 and in_window(window, self.timesteps[index])

    def cfg_skip(self) -> bool:
        # deltas exist once any full step observed both branches: a host-side fact, alike on every rank
        skip = (self.deltas is not None and self.step < len(self.timesteps)
                and self._skips_uncond(self.step, self.calls))
        self.calls += 1
        self.counts["uncond_skipped" if skip else "uncond_computed"] += 1
        return skip

    def cfg_observe(self, uncond: torch.Tensor, cond: torch.Tensor) -> None:
        if self.step >= self.last_skip:  # no cond-only step left: nothing to keep
            self.deltas = None
            return
        low_u, high_u = split_frequencies(uncond)
        low_c, high_c = split_frequencies(cond)
        self.deltas = (low_u - low_c, high_u - high_c)

    def frequency_weights(self) -> tuple[float, float]:
        c = self.config
        return (c.alpha_low if in_window(c.low_window, self.t) else 1.0,
                c.alpha_high if in_window(c.high_window, self.t) else 1.0)

    def cfg_supply(self, cond: torch.Tensor) -> torch.Tensor:
        w_low, w_high = self.frequency_weights()
        d_low, d_high = self.deltas
        d_low, d_high = d_low * w_low, d_high * w_high
        if self.config.compound:
            self.deltas = (d_low, d_high)
        return from_spectrum(spectrum(cond) + d_low + d_high).to(cond.dtype)

    # ---- reporting -------------------------------------------------------------------------------
    def stats(self) -> dict:
        return dict(sorted(self.counts.items()))

    def postfix(self) -> str:
        reused = sum(v for k, v in self.counts.items() if k.endswith("_reused"))
        total = reused + sum(v for k, v in self.counts.items() if k.endswith("_computed") and k != "uncond_computed")
        skipped, ran = self.counts["uncond_skipped"], self.counts["uncond_computed"]
        return f"fastercache attn {reused}/{total} reused, uncond {skipped}/{skipped + ran} skipped"


register("fastercache", FasterCacheConfig, FasterCache, for_model=FasterCacheConfig.for_model,
         parse=FasterCacheConfig.from_name, names=("fastercache",),
         sweep=("fastercache", "fastercache-3", "fastercache-2-3", "fastercache-3-3"),
         syntax="fastercache-<N>[-<U>][t]|fastercache-cfg[-<U>]")
