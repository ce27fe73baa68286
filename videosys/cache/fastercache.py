"""FasterCache (arXiv 2410.19355): dynamic feature reuse and CFG-Cache.

Dynamic feature reuse (module hook point). On the steps its schedule names a self-attention is not
computed; its output is extrapolated from its last two *computed* outputs A1 (newest) and A2:
    A_t = A1 + w(t) * (A1 - A2),
w ramping from 0 at the first step to 1 at the last (the paper: w "gradually increases from 0 to 1
as inference progresses"), a constant `weight`, or the authors' per-model ramp (`Ramp`). A module with
fewer than two usable computed outputs computes. Spatial, temporal and full (3D) self-attention;
cross-attention and MLPs are left alone (as in the paper, the authors' code and diffusers).

CFG-Cache (CFG branch hook point). On the model calls its schedule names (never the first) the uncond
branch does not run; its period counts the model calls of the generation (as the authors' `counter` does),
its window follows the step: alone (a call every step) the same as the step index, and next to a method that
skips whole steps the deltas keep being refreshed every N-th call (after its warm-up forecast-i2 runs the
model on odd steps only: by step index, "uncond on even steps" would never run it again). On the full
calls the difference (uncond - cond) is split with a 2D FFT over the last two (H, W) axes and a circular
low-pass mask (radius min(H, W) // 5 around the shifted spectrum's centre) into a low- and a high-frequency
delta. On cond-only steps uncond = IFFT(FFT(cond) + w_low * d_low + w_high * d_high), w_low = alpha_low
inside the low window (else 1), w_high = alpha_high inside the high window (else 1): early steps amplify the
low-frequency (structure) bias, late steps the high-frequency (detail) one.

Two ways to write a schedule (each part on its own):
- timesteps, diffusers' form: ((lo, hi), every): acts strictly inside lo < t < hi on steps whose 0-based
  index (uncond: 0-based model call) is not a multiple of `every`; frequency windows (lo, hi);
- model calls, the authors' form (`Calls`): their scripts count 1-based transformer calls (a `counter`
  +1 on every call; all four pipelines call the transformer once per step with the [uncond; cond]
  batch, so call = step index + 1; Open-Sora-Plan v1.1's PNDM makes 159 calls for its 150 steps, the 9
  PRK warm-up calls included) and act on calls first..last except where call % every == phase. Our "call"
  is the step index + 1 (every step calls the model); for uncond the period reads the 1-based model call
  count instead (the same alone; less than the step next to a step-skipping method), the bounds the step.
  The bounds (and a `Ramp`) count the authors' generation of `calls` model calls; a generation of
  another length n scales them by progress: our call c (ending at c / n of the run) is inside when
  c / n lies in ((first - 1) / calls, last / calls] (adjacent windows leave no gap); a Ramp is read at
  their call c * calls / n. At their step counts the schedule is theirs exactly. Scaled, not absolute:
  the bounds mark where on the trajectory features settle (structure early, details late), a
  fraction of the denoising; kept absolute, a 10-step run would never reach call 16 (nothing cached)
  and a 100-step one would start reusing 16% into it. The period (every / phase) counts this
  generation's calls: it is how many calls in a row are extrapolated, and the trajectory a call spans
  already grows when there are fewer.
Open-Sora's timesteps depend on the resolution (its shifted rflow schedule), another reason the
authors' defaults are in calls. Decisions come from the step index, the model call count, the timestep and
tensor shapes (host values alike on every rank), so CFG-parallel and sequence-parallel ranks agree without
talking; the skipped uncond rank runs no forward and so joins none of its collectives.

Where diffusers 0.42.1 differs from the paper (tests/test_fastercache.py shows each difference):
- it multiplies its stored deltas by the weight in place on every skipped step, so the weight
  compounds (alpha ** k on the k-th skipped step in a row); `compound=True` reproduces that (the
  authors' code does it too; their defaults and `fastercache-diffusers` keep it);
- it skips attention only on cond-only steps (a full [uncond; cond] batch always computes), and
  extrapolates from the last two *calls*, one of which may be an extrapolation itself (not reproduced:
  the only differences `fastercache-diffusers` keeps from diffusers' FasterCache);
- its default attention weight is a constant 0.5 (the paper: a ramp).
"""

import functools
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable

import torch

from videosys.cache.hooks import Cache, Site
from videosys.cache.registry import register

SELF_ATTENTION = {"spatial": "spatial", "full": "spatial", "temporal": "temporal"}  # site kind -> setting


@dataclass(frozen=True)
class Calls:
    """Model calls first..last (1-based, inclusive; last None: to the end) of the authors' generation; with
    `every`, minus the calls with call % every == phase (those compute). See the module docstring."""

    first: int = 1
    last: int | None = None
    every: int | None = None
    phase: int = 0

    def __post_init__(self):
        if self.first < 1 or (self.last is not None and self.last < self.first):
            raise ValueError(f"FasterCache Calls: need 1 <= first <= last, got {self.first}..{self.last}")
        if self.every is not None and not 0 <= self.phase < self.every:
            raise ValueError(f"FasterCache Calls: need every >= 1 and 0 <= phase < every, got every {self.every}, "
                             f"phase {self.phase}")

    def acts(self, call: int, scaled: tuple[int, int], count: int | None = None) -> bool:
        """Whether the part acts on this 1-based call (its place in the run: the bounds); scaled = (calls of the
        authors' generation, of this one); count: the 1-based model call the period reads (default `call`)."""
        count = call if count is None else count
        return self.inside(call, scaled) and (self.every is None or count % self.every != self.phase)

    def inside(self, call: int, scaled: tuple[int, int]) -> bool:
        """Whether this 1-based call lies within first..last, scaled by progress."""
        theirs, ours = scaled  # progress: our call c ends at c / ours, their calls first..last span
        end = call * theirs  # ((first - 1) / theirs, last / theirs]; compared in integers (x theirs * ours), exactly
        return (self.first - 1) * ours < end and (self.last is None or end <= self.last * ours)


@dataclass(frozen=True)
class Ramp:
    """An extrapolation weight that grows with the call: scale * (call - zero) / span (authors' calls)."""

    zero: float
    span: float
    scale: float

    def at(self, call: float) -> float:
        return self.scale * (call - self.zero) / self.span


# The families' published settings live with each family (videosys/models/<family>/cache_settings.py): the authors'
# settings, from Vchitect/FasterCache scripts/<model>/fastercache_sample_<model>.py (single-device scripts; counts
# are their 1-based `counter`, one [uncond; cond] call per step). Common to them:
# compound=True: the paper's formula weights the stored deltas once, but every one of the authors' released
# scripts (their published settings) multiplies them in place on each skipped call (alpha ** k on the k-th in
# a row, reset at each full call): alpha 1.1 without compounding is another operating point than theirs, milder
# (compound=False: the formula; tests/test_fastercache.py shows the difference).
# Where the newest computed output lacks the rows a call needs (a full call after a cond-only one) ours
# computes, as the authors' scripts with a shape check do. The multi-device scripts differ; the single-device
# ones are the reference. A model without the authors' settings gets diffusers' (DIFFUSERS).
#
# diffusers 0.42.1 FasterCacheConfig (diffusers' src/diffusers/hooks/faster_cache.py): spatial skip 2 in
# (-1, 681), temporal off, uncond every 5 in (-1, 641), alpha 1.1 / 1.1 in (99, 901) / (-1, 301), attention weight
# 0.5, deltas updated in place (compounding). 681 / 641 are the authors' Latte / CogVideoX start calls 16 / 18 of 50
# DDIM steps as timesteps. `fastercache-diffusers` in every family.
DIFFUSERS = dict(spatial=((-1, 681), 2), temporal=None, weight=0.5, uncond=((-1, 641), 5), alpha_low=1.1,
                 alpha_high=1.1, low_window=(99, 901), high_window=(-1, 301), compound=True, calls=None)


def _schedule(name: str, setting):
    """A part's schedule: None, Calls (or its dict, from YAML) or ((lo, hi), every) in timesteps."""
    if setting is None or isinstance(setting, Calls):
        return setting
    if isinstance(setting, dict):
        return Calls(**setting)
    (lo, hi), every = setting
    if int(every) < 1 or lo >= hi:
        raise ValueError(f"FasterCache {name}: need lo < hi and every >= 1, got window {(lo, hi)} every {every}")
    return (float(lo), float(hi)), int(every)


def _window(name: str, window):
    """A frequency window: Calls (every unset) or (lo, hi) in timesteps."""
    window = Calls(**window) if isinstance(window, dict) else window
    if isinstance(window, Calls):
        if window.every is not None:
            raise ValueError(f"FasterCache {name}: a frequency window has no period, got {window}")
        return window
    return tuple(float(v) for v in window)


@dataclass
class FasterCacheConfig:
    """A schedule is ((lo, hi), every) in timesteps (strict on both ends) or `Calls`; None = that part off.
    The class defaults are diffusers' windows with the paper's formula (the ramp weight, no compounding);
    `for_model` gives the family's published ones (BaseConfig.cache_settings)."""

    spatial: tuple[tuple[float, float], int] | Calls | None = ((-1, 681), 2)  # spatial and full 3D self-attention
    temporal: tuple[tuple[float, float], int] | Calls | None = None
    weight: float | Ramp | None = None  # extrapolation weight; None: the paper's ramp 0 -> 1 over the steps
    uncond: tuple[tuple[float, float], int] | Calls | None = ((-1, 641), 5)  # CFG-Cache: the steps uncond is skipped
    alpha_low: float = 1.1
    alpha_high: float = 1.1
    low_window: tuple[float, float] | Calls = (99, 901)
    high_window: tuple[float, float] | Calls = (-1, 301)
    compound: bool = False  # the weights compound over consecutive skipped steps (the authors' code, diffusers)
    calls: int | None = None  # the authors' generation length Calls / Ramp count in; None: this generation's
    # which rows of a full [uncond; cond] attention output a cond-only call extrapolates from: "cond" (ours: its
    # own branch's), or "first" (the authors' scripts slice the cached output's first rows, which after a full
    # call are the uncond rows: to reproduce their published numbers; not with CFG parallelism, where the cond
    # rank never holds uncond rows)
    cond_rows: str = "cond"

    def __post_init__(self):
        self.spatial = _schedule("spatial", self.spatial)
        self.temporal = _schedule("temporal", self.temporal)
        self.uncond = _schedule("uncond", self.uncond)
        self.low_window = _window("low_window", self.low_window)
        self.high_window = _window("high_window", self.high_window)
        if isinstance(self.weight, dict):
            self.weight = Ramp(**self.weight)
        elif self.weight is not None and not isinstance(self.weight, Ramp):
            self.weight = float(self.weight)
        self.alpha_low, self.alpha_high = float(self.alpha_low), float(self.alpha_high)
        if self.cond_rows not in ("cond", "first"):
            raise ValueError(f"FasterCache cond_rows must be 'cond' or 'first' (the authors'), got {self.cond_rows!r}")
        if self.calls is not None and int(self.calls) < 1:
            raise ValueError(f"FasterCache calls: need a positive number of model calls, got {self.calls}")

    @classmethod
    def for_model(cls, setting: dict | None, **overrides) -> "FasterCacheConfig":
        """The family's published setting (its fields), with `overrides`; none published: an error (a model
        without the authors' settings publishes diffusers', DIFFUSERS, in its cache_settings.py)."""
        if setting is None:
            raise ValueError("no published FasterCache defaults for this model (pass the settings explicitly, e.g. "
                             "fastercache-diffusers)")
        return cls(**{**setting, **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None) -> "FasterCacheConfig | None":
        """"diffusers": diffusers' defaults. "N" (of "fastercache-3"): attention (spatial, and temporal where the
        defaults reuse it) computed every N-th step; "N-U": and uncond every U-th; a trailing "t" ("3t", "3-4t")
        reuses temporal attention with the spatial schedule. "cfg" / "cfg-U": the CFG-Cache part alone (attention
        always computed; the defaults' uncond schedule, with period U), to combine with a step or module method."""
        if arg == "diffusers":
            return cls(**DIFFUSERS)
        if arg == "cfg" or arg.startswith("cfg-"):
            every = arg[4:] or None
            if every is not None and not (every.isdigit() and int(every) >= 1):
                return None
            base = cls.for_model(setting)
            uncond = base.uncond if every is None else _every(base.uncond, int(every))
            return cls.for_model(setting, spatial=None, temporal=None, uncond=uncond)
        temporal = arg.endswith("t")
        parts = (arg[:-1] if temporal else arg).split("-")
        if not 1 <= len(parts) <= 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            return None
        base = cls.for_model(setting)
        spatial = _every(base.spatial, int(parts[0]))
        if len(parts) == 2 and base.uncond is None:
            raise ValueError(f"fastercache-{arg}: this model runs no classifier-free guidance, so CFG-Cache (the "
                             f"uncond interval {parts[1]}) does not apply; use fastercache-{parts[0]}")
        uncond = base.uncond if len(parts) == 1 else _every(base.uncond, int(parts[1]))
        return cls.for_model(setting, spatial=spatial, uncond=uncond,
                             temporal=spatial if temporal else _every(base.temporal, int(parts[0])))


def _every(setting, every: int):
    """The schedule with another period (Calls keep their phase modulo it)."""
    if setting is None:
        return None
    if isinstance(setting, Calls):
        return replace(setting, every=every, phase=setting.phase % every)
    return setting[0], every


def in_window(window: tuple[float, float], t: float) -> bool:
    return window[0] < t < window[1]


def ramp_weight(index: int, num_steps: int) -> float:
    """The paper's w(t): 0 at the first step, 1 at the last, linear in the step index."""
    return index / (num_steps - 1) if num_steps > 1 else 0.0


def low_pass_mask(height: int, width: int, device) -> torch.Tensor:
    """(H, W) bool: the disc of radius min(H, W) // 5 around the centre (W // 2, H // 2) of an fftshift-ed
    spectrum (the FasterCache authors' and diffusers' mask). Built once per shape and device (the last few kept)."""
    return _low_pass_mask(height, width, str(device))


# bounded: a long-lived server sees many latent sizes and devices; a generation uses one or two masks
@functools.lru_cache(maxsize=8)
def _low_pass_mask(height: int, width: int, device: str) -> torch.Tensor:
    radius = min(height, width) // 5
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (((x - width // 2) ** 2 + (y - height // 2) ** 2) <= radius ** 2).to(device)


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


def spacing(past: list, step: int, call: int) -> float:
    """How far this extrapolation reaches in steps relative to how far it reaches in module calls: (step - s1) /
    (s1 - s2) over (call - c1) / (c1 - c2) for the computed outputs (s2, c2) older and (s1, c1) newer. 1 when every
    step runs the modules (alone: the weight as published); next to a method that skips whole steps unevenly
    it keeps the extrapolation in step units (a reach over 3 steps from outputs 1 step apart is 3 times longer)."""
    (_, _, s2, c2), (_, _, s1, c1) = past
    ratio = ((step - s1) * (c1 - c2)) / ((s1 - s2) * (call - c1))
    return 1.0 if ratio == 1 else ratio


class FasterCache(Cache):
    """Per-transformer state: each self-attention's last two computed outputs; the CFG deltas."""

    def __init__(self, config: FasterCacheConfig):
        self.config = config
        self.begin([])

    def check_model(self, model) -> None:
        if self.config.uncond is not None and not getattr(model, "guided", True):
            raise ValueError(f"FasterCache's CFG-Cache (uncond={self.config.uncond}) needs classifier-free guidance; "
                             f"{type(model).__name__}'s pipeline runs none, so it would never act: set uncond=None "
                             "(its attention reuse alone, the default for this model)")

    @classmethod
    def acts_at(cls, config: FasterCacheConfig) -> frozenset:
        """Module calls where attention reuse is on, the CFG point where CFG-Cache is. Not "stack": that hook only
        observes the batch rows (it replaces nothing), so a stack method (TeaCache, ...) may join."""
        return frozenset(["module"] * (config.spatial is not None or config.temporal is not None)
                         + ["cfg"] * (config.uncond is not None))

    def begin(self, timesteps: list[float], refresh_steps=()) -> None:
        self.timesteps = [float(t) for t in timesteps]
        self.refresh_steps = frozenset(refresh_steps)
        n = max(len(self.timesteps), 1)
        self.scaled = (self.config.calls or n, n)  # (the authors' calls, this generation's): Calls' scaling
        self.step, self.t = 0, self.timesteps[0] if self.timesteps else 0.0
        self.history: dict[tuple, list] = {}  # module -> [older, newer] computed (output, branch, step, call)
        self.module_calls, self.module_step = 0, None  # the steps whose modules ran so far: the attention period
        self.deltas: tuple[torch.Tensor, torch.Tensor] | None = None  # (low, high) spectra of uncond - cond
        self.counts: Counter = Counter()
        self.cond_ratio: int | None = None  # rows of a full-batch attention output per row of a cond-only one
        self.rows: dict[str, int] = {}  # branch -> the block stack's batch rows (streams[0].shape[0])
        self.calls = 0  # model calls through the CFG point so far: CFG-Cache's period counts them
        self.uncond_plan = [self._skips_uncond(i) for i in range(len(self.timesteps))]  # with a call every step
        # the last step that may extrapolate, per kind: after it the stored outputs are dropped (memory)
        self.last_reuse = {kind: max((i for i in range(len(self.timesteps)) if self.may_reuse(kind, i)), default=-1)
                           for kind in ("spatial", "temporal")}
        # the last step that may run cond-only, whatever the call count there
        self.last_skip = max((i for i in range(len(self.timesteps)) if self._may_act(self.config.uncond, i)),
                             default=-1)

    def set_step(self, index: int, timestep: float) -> None:
        self.step, self.t = index, float(timestep)

    def acts(self, setting, index: int, call: int | None = None) -> bool:
        """Whether a part's schedule (Calls or ((lo, hi), every) in timesteps) acts at step `index` as the 0-based
        model call `call` of the generation (default: the index, every step calling the model): the window
        follows the step, the period the call."""
        call = index if call is None else call
        if isinstance(setting, Calls):  # the authors count 1-based calls
            return setting.acts(index + 1, self.scaled, count=call + 1)
        window, every = setting
        return call % every != 0 and in_window(window, self.timesteps[index])

    # ---- dynamic feature reuse -------------------------------------------------------------------
    def stack(self, stack) -> tuple:
        """Observe only: the stack's batch rows per branch give the full-to-cond row ratio (2, or 1 on a CFG-parallel
        cond rank) before the first cond-only call's attention, so that call may extrapolate from full batches."""
        self.rows[stack.branch] = stack.streams[0].shape[0]
        if self.cond_ratio is None and len(self.rows) == 2:
            self.cond_ratio = self.rows["batch"] // self.rows["cond"]
        return stack.run(*stack.streams)

    def reuses(self, kind: str, index: int | None = None, call: int | None = None) -> bool:
        """Whether attention of this setting kind ("spatial" / "temporal") is extrapolated at step `index` as the
        0-based call `call` of the modules (default: the index): the window follows the step, the period the calls
        that ran the modules (next to a method that skips whole steps, the steps it computes)."""
        index = self.step if index is None else index
        setting = getattr(self.config, kind)
        if setting is None or index in self.refresh_steps:
            return False
        return self.acts(setting, index, call)

    def may_reuse(self, kind: str, index: int) -> bool:
        """Extrapolated at step `index` for some call count: inside the window, with a period that reuses."""
        return self._may_act(getattr(self.config, kind), index)

    def _may_act(self, setting, index: int) -> bool:
        """Whether a part's schedule (a Calls, or a (window, every) pair) may act at step `index` for some call
        count: inside its window, with a period that skips."""
        if setting is None or index in self.refresh_steps:
            return False
        if isinstance(setting, Calls):
            return setting.inside(index + 1, self.scaled) and setting.every != 1
        window, every = setting
        return every > 1 and in_window(window, self.timesteps[index])

    def weight(self, index: int | None = None) -> float:
        index = self.step if index is None else index
        w = self.config.weight
        if w is None:
            return ramp_weight(index, len(self.timesteps))
        if isinstance(w, Ramp):
            theirs, ours = self.scaled
            return w.at((index + 1) * theirs / ours)  # at the authors' call this step stands for
        return w

    def module(self, site: Site, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        kind = SELF_ATTENTION.get(site.kind)
        if kind is None or getattr(self.config, kind) is None:
            return compute()
        if self.module_step != self.step:  # the first module call of a step the modules run on
            self.module_step, self.module_calls = self.step, self.module_calls + 1
        call = self.module_calls - 1
        key = (site.kind, site.block, site.index)
        past = self.history.get(key, [])
        if self.reuses(kind, call=call) and len(past) == 2:
            older, newer = (self._view(entry, site.branch) for entry in past)
            if older is not None and newer is not None:
                self.counts[f"{kind}_reused"] += 1
                return newer + self.weight() * spacing(past, self.step, call) * (newer - older)
        out = compute()
        self.counts[f"{kind}_computed"] += 1
        if self.cond_ratio is None and site.branch == "cond" and past and past[-1][1] == "batch":
            self.cond_ratio = past[-1][0].shape[0] // out.shape[0]  # as stack() learns it, for a model without one
        if self.step < self.last_reuse[kind]:
            self.history[key] = (past + [(out, site.branch, self.step, call)])[-2:]
        else:
            self.history.pop(key, None)
        return out

    def _view(self, entry: tuple[torch.Tensor, str], branch: str) -> torch.Tensor | None:
        """A computed output as the current call's branch sees it: itself, the cond part of a full batch
        ([uncond; cond] rows, or all of it where this rank runs only cond), or None (no uncond in a cond output)."""
        out, source = entry[:2]
        if source == branch:
            return out
        if branch == "cond" and source == "batch" and self.cond_ratio is not None:
            first = self.config.cond_rows == "first"
            if self.cond_ratio == 1:  # a CFG-parallel cond rank: its batch is the cond rows alone
                if first:
                    raise ValueError("FasterCache cond_rows='first' reads a full batch's uncond rows, which a "
                                     "CFG-parallel cond rank does not hold: use cond_rows='cond' with cfg_parallel")
                return out
            return out.chunk(self.cond_ratio)[0 if first else -1]
        return None

    # ---- CFG-Cache -------------------------------------------------------------------------------
    def _skips_uncond(self, index: int, call: int | None = None) -> bool:
        """Cond-only at step `index` as the 0-based model call `call` (default: the index)?"""
        call = index if call is None else call
        if self.config.uncond is None or call == 0 or index in self.refresh_steps:
            return False
        return self.acts(self.config.uncond, index, call)

    def cfg_skip(self) -> bool:
        # deltas exist once any full call observed both branches: a host-side fact, alike on every rank
        skip = (self.deltas is not None and self.step < len(self.timesteps)
                and self._skips_uncond(self.step, self.calls))
        self.calls += 1
        self.counts["uncond_skipped" if skip else "uncond_computed"] += 1
        return skip

    def cfg_keeps(self) -> bool:
        """Whether this step's branches supply the next call's uncond (hooks.Cache.cfg_keeps): cfg_skip has counted
        this step's call, so the next is call `self.calls`."""
        return self.step + 1 < len(self.timesteps) and self._skips_uncond(self.step + 1, self.calls)

    def cfg_observe(self, uncond: torch.Tensor, cond: torch.Tensor) -> None:
        if self.step >= self.last_skip:  # no cond-only step left: nothing to keep
            self.deltas = None
            return
        low_u, high_u = split_frequencies(uncond)
        low_c, high_c = split_frequencies(cond)
        self.deltas = (low_u - low_c, high_u - high_c)

    def frequency_weights(self) -> tuple[float, float]:
        c = self.config
        return (c.alpha_low if self._in_window(c.low_window) else 1.0,
                c.alpha_high if self._in_window(c.high_window) else 1.0)

    def _in_window(self, window) -> bool:
        if isinstance(window, Calls):
            return window.acts(self.step + 1, self.scaled)
        return in_window(window, self.t)

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
         parse=FasterCacheConfig.from_name, names=("fastercache", "fastercache-diffusers"),
         sweep=("fastercache", "fastercache-diffusers", "fastercache-3", "fastercache-2-3", "fastercache-3-3"),
         syntax="fastercache-<N>[-<U>][t]|fastercache-cfg[-<U>]", pair_names=("fastercache", "fastercache-cfg"),
         reuses_last_step=True)  # a schedule may extrapolate attention or skip uncond on the last step
