"""First-Block-Cache (ParaAttention, chengzeyi/ParaAttention README "First Block Cache"; diffusers
hooks/first_block_cache.py).

At the block-stack hook point: every step runs the stack's first unit; the relative L1 change of the
residual it adds (output - input of the first stream), against that of the last step that ran the whole
stack, decides: over the threshold, run the rest and keep the residual the rest added (per stream);
at or under it, skip the rest and add the kept residual to the first unit's output.

A unit is one loop step of the family's stack (hooks.BlockStack): CogVideoX / Open-Sora-Plan v1.2 one
block, Latte / Open-Sora-Plan v1.1 / Open-Sora 1.2 a (spatial, temporal) pair. diffusers takes the first
module of the block lists it finds (Latte: spatial block 0 as head, then every other spatial block before
any temporal one), which mixes the two block lists; here the head is the first whole unit.

Ranks agree: the L1 sums are reduced over the stack's group (teacache.relative_l1). Under sequence
parallelism a padded last shard's padding tokens enter the sums (the decision is the same on every rank,
but may differ from one process' when the tokens do not divide).
"""

import math
from dataclasses import dataclass

import torch

from videosys.cache.hooks import BlockStack, StepCache
from videosys.cache.registry import OneThreshold, register
from videosys.cache.teacache import relative_l1


@dataclass
class FirstBlockCacheConfig(OneThreshold):
    threshold: float = 0.05  # diffusers' FirstBlockCacheConfig default (ParaAttention suggests 0.05-0.12 per model)

    def __post_init__(self):
        if not self.threshold >= 0:
            raise ValueError(f"First-Block-Cache threshold must be >= 0, got {self.threshold}")


@dataclass
class _BranchState:
    head_residual: torch.Tensor | None = None  # first unit's residual on the last fully computed step
    tail: tuple[torch.Tensor, ...] | None = None  # what the rest of the stack added then, per stream


class FirstBlockCache(StepCache):
    def skip(self, state: _BranchState, residual: torch.Tensor, group) -> bool:
        if state.head_residual is None or state.tail is None or self.step in self.refresh_steps:
            return False
        if residual.shape != state.head_residual.shape:
            return False
        diff = float(relative_l1(residual, state.head_residual, group))  # the one host sync of the step
        return math.isfinite(diff) and diff <= self.config.threshold  # diffusers computes when diff > threshold

    def stack(self, stack: BlockStack) -> tuple:
        state = self.branches.setdefault(stack.branch, _BranchState())
        head = stack.first(*stack.streams)
        residual = head[0] - stack.streams[0]
        if self.skip(state, residual, stack.group):
            self.reused_steps.append(self.step)
            return tuple(h + r for h, r in zip(head, state.tail))
        out = stack.rest(*head)
        state.head_residual = residual
        state.tail = tuple(o - h for o, h in zip(out, head))
        self.computed += 1
        return out


register("fbcache", FirstBlockCacheConfig, FirstBlockCache, for_model=FirstBlockCacheConfig.for_model,
         parse=FirstBlockCacheConfig.from_name, names=("fbcache",),
         sweep=("fbcache-0.03", "fbcache-0.05", "fbcache-0.08", "fbcache-0.12", "fbcache-0.2"),
         syntax="fbcache-<threshold>",
         reuses_last_step=True)  # as ParaAttention's and diffusers': nothing forces the last step to compute
