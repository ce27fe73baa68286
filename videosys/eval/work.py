"""Counted work and transformer time of a generation, the same for our caches and the peers' hooks.

Counted work is the floating-point operations of a module's forwards (torch's flop formulas: matmuls,
convolutions, attention): exact and repeatable where wall time on a shared machine is not, and blind to who
skipped the work (our cache engine, diffusers' hooks, cache-dit's blocks), since it counts what ran. A cache's
work fraction is its FLOPs over the uncached generation's of the same job.
"""

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class FlopCount(TorchDispatchMode):
    """The FLOPs of what runs inside it, by torch's own formulas (torch.utils.flop_counter.flop_registry), counted
    as FlopCounterMode counts them but without its per-module tracker, whose hooks recurse forever on a model whose
    blocks cache-dit has wrapped."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry and func is not torch.ops.prim.device.default:
            with self:  # an op without a formula may decompose into ones with (FlopCounterMode does the same)
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if packet in flop_registry:
            self.total += flop_registry[packet](*args, **kwargs, out_val=out)
        return out


class ForwardMeter:
    """Forward hooks on a module: the wall seconds of its calls (`spent`, synchronised on CUDA) and, while
    `counting`, their FLOPs (`flops`). Hooks, not a replaced `forward`, so whatever patches the forward (cache-dit,
    diffusers' hooks) is measured as it runs."""

    def __init__(self, module: torch.nn.Module, counting: bool = False):
        self.spent, self.flops, self.counting = 0.0, 0, counting
        self._start, self._counter = 0.0, None
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after, always_call=True)  # also when the forward raises: the mode exits

    def _before(self, module, args) -> None:
        if self.counting:
            self._counter = FlopCount()
            self._counter.__enter__()
        self._start = time.perf_counter()

    def _after(self, module, args, output) -> None:
        sample = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
        if isinstance(sample, torch.Tensor) and sample.is_cuda:
            torch.cuda.synchronize(sample.device)
        self.spent += time.perf_counter() - self._start
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops += self._counter.total
            self._counter = None

    def reset(self) -> None:
        self.spent, self.flops = 0.0, 0
