"""EasyCache (Zhou et al., "Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive
Caching", 2025; code H-EmbodVis/EasyCache).

No calibration: the *transformation rate* k = mean|out_i - out_j| / mean|in_i - in_j| between the last two
fully computed steps i, j is measured at run time. On a later step the predicted relative output change
k * mean|in - in_prev| / mean|out_last| accumulates; while the sum stays under the threshold the step is
skipped and the residual of the last computed step (out - in) is added to the input; at or over it the step
computes and the sum restarts. The first `warmup` steps and the last one always compute.

The authors wrap the whole transformer (in = the latents, out = the prediction). Here it acts at the
block-stack hook point, as the other step caches do: in / out are the stack's first stream before and after
(the patch-embedded latents, the blocks' output), so the embedding and final layer still run, and every
stream gets its own residual. The sums are reduced over the stack's group (all ranks decide alike); one host
sync per candidate step, for the decision.
"""

import math
from dataclasses import dataclass

import torch

from videosys.cache.hooks import BlockStack, StepCache
from videosys.cache.registry import OneThreshold, register


@dataclass
class EasyCacheConfig(OneThreshold):
    # the authors' HunyuanVideo script (EasyCache4HunyuanVideo/easycache_sample_video.py): thresh 0.025, ret_steps 5
    threshold: float = 0.025
    warmup: int = 5  # steps that always compute at the start (the authors' ret_steps)

    def __post_init__(self):
        if not self.threshold >= 0 or self.warmup < 1:
            raise ValueError(f"EasyCache needs threshold >= 0 and warmup >= 1, got {self}")


def abs_sums(tensors, group) -> torch.Tensor:
    """sum |t| of each tensor in fp32, over every rank's part."""
    from videosys.core.comm import all_reduce_sum

    return all_reduce_sum(torch.stack([torch.sum(t.abs(), dtype=torch.float32) for t in tensors]), group)


@dataclass
class _BranchState:
    previous_in: torch.Tensor | None = None  # the last step's input (computed or skipped)
    computed_in: torch.Tensor | None = None  # the input of the last computed step
    computed_out: torch.Tensor | None = None  # its output
    rate: torch.Tensor | None = None  # k, on the device
    residual: tuple[torch.Tensor, ...] | None = None
    accumulated: float = 0.0


class EasyCache(StepCache):
    def skip(self, state: _BranchState, x: torch.Tensor, group) -> bool:
        edge = self.step < self.config.warmup or self.step >= self.num_steps - 1 or self.step in self.refresh_steps
        if edge or state.rate is None or state.residual is None or state.previous_in.shape != x.shape:
            state.accumulated = 0.0
            return False
        change, norm = abs_sums((x - state.previous_in, state.computed_out), group)
        predicted = float(state.rate * change / norm)  # the one host sync of the step
        state.accumulated += predicted
        if math.isfinite(state.accumulated) and state.accumulated < self.config.threshold:
            return True
        state.accumulated = 0.0
        return False

    def stack(self, stack: BlockStack) -> tuple:
        state = self.branches.setdefault(stack.branch, _BranchState())
        x = stack.streams[0]
        skip = self.skip(state, x, stack.group)
        state.previous_in = x
        if skip:
            self.reused_steps.append(self.step)
            return tuple(s + r for s, r in zip(stack.streams, state.residual))
        out = stack.run(*stack.streams)
        state.residual = tuple(o - s for o, s in zip(out, stack.streams))
        if state.computed_out is not None and state.computed_out.shape == out[0].shape:
            out_change, in_change = abs_sums((out[0] - state.computed_out, x - state.computed_in), stack.group)
            state.rate = out_change / in_change  # k: stays on the device
        state.computed_in, state.computed_out = x, out[0]
        self.computed += 1
        return out


register("easycache", EasyCacheConfig, EasyCache, for_model=EasyCacheConfig.for_model,
         parse=EasyCacheConfig.from_name, names=("easycache",),
         sweep=("easycache-0.01", "easycache-0.025", "easycache-0.05", "easycache-0.1", "easycache-0.2"),
         syntax="easycache-<threshold>", reuses_last_step=False)  # its last step always computes (as the authors')
