"""Pyramid Attention Broadcast (PAB, arXiv 2408.12588).

Inside a timestep window (lo < t < hi, strict) an attention module recomputes its output
only on steps whose index is a multiple of its range and otherwise reuses (broadcasts) its
last output; ranges grow spatial < temporal < cross. MLP broadcast: at listed timesteps a
listed block computes its MLP and the next `skip` steps reuse it.

Everything is decided from the step index and the timestep value, which every rank of a
parallel run shares, so ranks agree without talking (and a broadcast attention also skips
its communication). PAB acts at the module hook point (videosys/cache/hooks.py); full 3D
attention (CogVideoX, Open-Sora-Plan v1.2) broadcasts as spatial attention, as in the paper.
One output is kept per module instance (site kind, block kind, index), as the authors' code keeps
one per block: Open-Sora's spatial block i and temporal block i both cross-attend, each its own.

What is broadcast follows the PAB authors' code (VideoSys, whose published PAB numbers we
reproduce), per family: the tensor `compute()` returns is what a later step adds back.
- Latte, Open-Sora-Plan v1.1 (LatteT2V), Open-Sora 1.2: self-attention and MLP outputs *after*
  their adaLN gate (gate_msa * attn, gate_mlp * mlp; Open-Sora with the t0 gate on x_mask frames);
  cross-attention has no gate.
- Open-Sora-Plan v1.2, CogVideoX: the self-attention output *before* its gate; the current
  step's gate multiplies the broadcast tensor (neither family broadcasts its MLP).
Timesteps are compared in the form the authors compare them: the pipelines hand `begin` the
values VideoSys passes to int() (Open-Sora: rounded to bf16 first; Open-Sora-Plan v1.2's
fractional Euler timesteps truncated).
"""

import dataclasses
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from videosys.cache.hooks import Cache, Site
from videosys.cache.registry import LegacyFlags, register

ATTENTION_KINDS = ("spatial", "temporal", "cross")

# The published settings are per family (videosys/models/<family>/cache_settings.py, "pab"): window (lo, hi) and
# range per attention kind, a kind the family leaves out never broadcasts; MLP: {timestep: (blocks, skip)}.


@dataclass
class PABConfig:
    """None for a kind = never broadcast it. Windows are (lo, hi), strict on both ends. The windows are per model
    (the family's published ones: for_model / a name), so a kind left unset broadcasts nothing."""

    spatial: tuple[tuple[float, float], int] | None = None
    temporal: tuple[tuple[float, float], int] | None = None
    cross: tuple[tuple[float, float], int] | None = None
    mlp: dict[float, tuple[tuple[int, ...], int]] = field(default_factory=dict)  # timestep -> (blocks, skip)
    mlp_kinds: tuple[str, ...] = ("spatial", "temporal")  # blocks whose MLPs PAB handles (counts, may broadcast)

    def __post_init__(self):
        for kind in ATTENTION_KINDS:
            setting = getattr(self, kind)
            if setting is None:
                continue
            (lo, hi), every = setting
            if int(every) < 1 or lo >= hi:
                raise ValueError(f"PAB {kind}: need lo < hi and range >= 1, got window {(lo, hi)} range {every}")
            setattr(self, kind, ((float(lo), float(hi)), int(every)))
        self.mlp = {float(t): (tuple(int(b) for b in blocks), int(skip)) for t, (blocks, skip) in self.mlp.items()}
        self.mlp_kinds = tuple(self.mlp_kinds)

    @classmethod
    def for_model(cls, setting: dict | None, **overrides) -> "PABConfig":
        """The family's published setting (a kind it leaves out is off) with `overrides`."""
        if setting is None:
            raise ValueError("no published PAB defaults for this model (pass the settings explicitly)")
        return cls(**{**setting, **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None) -> "PABConfig | None":
        """The paper's named variants: "246" (of "pab-246") = spatial / temporal / cross ranges."""
        if len(arg) == 3 and arg.isdigit():
            return pab_variant(setting, *(int(c) for c in arg))
        return None


def pab_variant(setting: dict | None, spatial: int, temporal: int, cross: int) -> PABConfig:
    """The PAB paper's named variants ("pab-246", "pab-357", "pab-579": spatial / temporal / cross
    ranges) in the model's published windows and MLP table; a kind the model does not broadcast stays off."""
    base = PABConfig.for_model(setting)
    ranges = {"spatial": spatial, "temporal": temporal, "cross": cross}
    return dataclasses.replace(base, **{kind: (getattr(base, kind)[0], every) for kind, every in ranges.items()
                                        if getattr(base, kind) is not None})


class PAB(Cache):
    """Per-transformer broadcast state: last outputs per (kind, block) and the step's plan."""

    def __init__(self, config: PABConfig):
        self.config = config
        self.begin([])

    def begin(self, timesteps: list[float], refresh_steps=()) -> None:
        """Plan the whole generation from its timesteps and forget stored outputs; every module computes
        on `refresh_steps`."""
        self.timesteps = [float(t) for t in timesteps]
        self.refresh_steps = frozenset(refresh_steps)
        self.step = 0
        self.outputs: dict[tuple, torch.Tensor] = {}
        self.stored_at: dict[tuple, int] = {}  # the step each kept output was computed on
        self.counts: Counter = Counter()
        n = len(self.timesteps)
        self.broadcast_plan = {kind: [self._broadcasts(kind, i) for i in range(n)] for kind in ATTENTION_KINDS}
        # per kind and step: the last step at or before it that the plan computes (a broadcast reuses its output)
        self.source = {kind: list(itertools.accumulate((-1 if b else i for i, b in enumerate(plan)), max))
                       for kind, plan in self.broadcast_plan.items()}
        self.mlp_source: list[dict[int, int]] = [{} for _ in range(n)]  # block -> the store step it reuses
        self.mlp_reuse: list[set[int]] = [set() for _ in range(n)]  # blocks reusing their MLP at step i
        self.mlp_store: list[set[int]] = [set() for _ in range(n)]
        for t, (blocks, skip) in self.config.mlp.items():
            if t in self.timesteps:  # listed timesteps the schedule does not visit are ignored
                k = self.timesteps.index(t)
                self.mlp_store[k].update(blocks)
                for j in range(k + 1, min(k + 1 + skip, n)):
                    if j not in self.refresh_steps:
                        self.mlp_reuse[j].update(blocks)
                        for b in blocks:
                            self.mlp_source[j][b] = max(k, self.mlp_source[j].get(b, -1))

    def _broadcasts(self, kind: str, index: int) -> bool:
        setting = getattr(self.config, kind)
        if setting is None:
            return False
        (lo, hi), every = setting
        return index % every != 0 and lo < self.timesteps[index] < hi and index not in self.refresh_steps

    def set_step(self, index: int, timestep: float) -> None:
        self.step = index

    def _needed_later(self, kind: str) -> bool:
        return any(self.broadcast_plan[kind][self.step + 1:])

    def attention(self, kind: str, block: int, compute: Callable[[], torch.Tensor], owner: str | None = None,
                  branch: str = "batch") -> torch.Tensor:
        """compute(), or on a broadcast step the last output of this module: `kind` of block `block` (of the
        stack `owner`, where two stacks have the same kind at the same index), for this CFG branch."""
        key = (kind, owner, block) if branch == "batch" else (branch, kind, owner, block)
        # the output kept must be the one of the plan's last compute step: one a method around PAB skipped (or this
        # CFG branch missed) leaves an older output, which this step computes instead of broadcasting
        if (self.broadcast_plan[kind][self.step] and key in self.outputs
                and self.stored_at[key] >= self.source[kind][self.step]):
            self.counts[f"{kind}_reused"] += 1
            return self.outputs[key]
        out = compute()
        self.counts[f"{kind}_computed"] += 1
        if self._needed_later(kind):
            self.outputs[key], self.stored_at[key] = out, self.step
        else:
            self.outputs.pop(key, None)  # past the window: free the memory
        return out

    def module(self, site: Site, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The module hook: attention by kind, MLPs by the kind of their block; "full" counts as spatial."""
        if site.kind == "mlp":
            return self.mlp("spatial" if site.block == "full" else site.block, site.index, compute, site.branch)
        kind = "spatial" if site.kind == "full" else site.kind
        return self.attention(kind, site.index, compute, owner=site.block, branch=site.branch)

    def refresh(self, site: Site, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A call whose branch missed steps (hooks.Cache.refresh): compute, and keep the output where a later step
        of this module broadcasts it."""
        if site.kind == "mlp":
            kind = "spatial" if site.block == "full" else site.block
            if kind not in self.config.mlp_kinds:
                return compute()
            out, key = compute(), (site.branch, "mlp", kind, site.index)
            self.counts["mlp_computed"] += 1
            if site.index in self.mlp_store[self.step]:
                self.outputs[key], self.stored_at[key] = out, self.step
            return out
        kind = "spatial" if site.kind == "full" else site.kind
        out, key = compute(), (site.branch, kind, site.block, site.index)
        self.counts[f"{kind}_computed"] += 1
        if self._needed_later(kind):
            self.outputs[key], self.stored_at[key] = out, self.step
        return out

    def mlp(self, kind: str, block: int, compute: Callable[[], torch.Tensor], branch: str = "batch"):
        key = ("mlp", kind, block) if branch == "batch" else (branch, "mlp", kind, block)
        if kind not in self.config.mlp_kinds:
            return compute()
        if (block in self.mlp_reuse[self.step] and key in self.outputs
                and self.stored_at[key] == self.mlp_source[self.step][block]):
            self.counts["mlp_reused"] += 1
            return self.outputs[key]
        out = compute()
        self.counts["mlp_computed"] += 1
        if block in self.mlp_store[self.step]:
            self.outputs[key], self.stored_at[key] = out, self.step
        elif key in self.outputs and block not in self.mlp_reuse[self.step]:
            del self.outputs[key]
        return out

    def stats(self) -> dict:
        return dict(sorted(self.counts.items()))

    def postfix(self) -> str:
        reused = sum(v for k, v in self.counts.items() if k.endswith("_reused"))
        total = reused + sum(v for k, v in self.counts.items() if k.endswith("_computed"))
        return f"pab {reused}/{total} reused"


register("pab", PABConfig, PAB, for_model=PABConfig.for_model, parse=PABConfig.from_name, names=("pab",),
         sweep=("pab-246", "pab-357", "pab-579"), syntax="pab-<ranges>",
         # a module may broadcast on the last step too, where the model's window covers its timestep
         reuses_last_step=True,
         legacy_flags=LegacyFlags("enable_pab", lambda config: "pab"))  # the paper's switch: enable_pab=True
