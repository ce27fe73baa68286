"""torch.compile for compile=True: the whole forward, whole blocks or their branches, per active cache.

A transformer class may name `compiled_forward` (its forward): with no stack or module-hook cache
method on, the whole forward is compiled (patch embedding, timestep embedding, every block, output
layer: one graph; the text work is computed in it each step, text_memo.py).
A block class names its pure tensor work twice:
- `compiled_block`: the method that runs the whole block on the residual stream (modulation, the
  branches, gates, residual adds), taking the cache's module hooks as `hooks=`. Called with
  hooks=None (no module-hook method on: no cache, or only stack / CFG / step-output methods), it
  runs compiled as one graph: the glue between the branches fuses with them, and one compiled call
  replaces several per block.
- `compiled_methods`: the branch computations (Latte: attention, cross-attention and MLP). With a
  module-hook method on (PAB, FasterCache, TaylorSeer, ...), the block method runs eagerly, so the
  hooks see every branch boundary, and each branch runs compiled.
The choice is made per call from `hooks`, so a `set_cache` between generations switches path
with nothing to recompile once both were compiled (dynamo guards on hooks being None).

Each (class, method) is compiled once and shared by every block of that class, so a 28-block
stack compiles one graph per kind and shape, not 28. The text memos (text_memo.py), the stack
hooks and every cache decision run eagerly around the compiled calls; under sequence parallelism
the collectives inside a block or branch are graph breaks (they run eagerly between compiled pieces).
"""

import types

import torch
from torch import nn

from videosys.models.modules.inductor_passes import CPU_REWRITES

_compiled: dict[tuple[type, str], object] = {}
# same maths, less work on CPU (inductor_passes.py; none on torch < 2.6)
COMPILE_OPTIONS = {"post_grad_custom_post_pass": CPU_REWRITES} if CPU_REWRITES is not None else {}


def compiled_function(cls: type, name: str):
    """torch.compile of cls.name, one per (class, method) for the process."""
    key = (cls, name)
    if key not in _compiled:
        # static shapes: a new resolution or batch compiles its own graph once (a dynamic one would break at the
        # position tables, embeddings.constant_table, whose arguments must be Python numbers)
        _compiled[key] = torch.compile(getattr(cls, name), dynamic=False, options=COMPILE_OPTIONS)
    return _compiled[key]


def block_function(cls: type, name: str):
    """cls.name compiled whole when called with hooks=None, else eager (around its compiled branches)."""
    whole, eager = compiled_function(cls, name), getattr(cls, name)

    def call(self, *args, hooks=None, **kwargs):
        return (whole if hooks is None else eager)(self, *args, hooks=hooks, **kwargs)

    return call


def forward_function(cls: type, name: str):
    """cls.name (a transformer's forward) compiled whole while no stack or module-hook cache method is active
    (none, or only CFG / step-output methods, which act in the pipeline), else eager around compiled blocks."""
    whole, eager = compiled_function(cls, name), getattr(cls, name)

    def call(self, *args, **kwargs):
        hooked = any(c.stack is not None or c.module is not None for c in self.caches.values())
        return (eager if hooked else whole)(self, *args, **kwargs)

    return call


def compile_regions(model: nn.Module) -> int:
    """Point the model's `compiled_forward` and every block's `compiled_block` and `compiled_methods` at their
    compiled versions; returns how many were bound."""
    bound = 0
    name = getattr(type(model), "compiled_forward", None)
    if name is not None:
        setattr(model, name, types.MethodType(forward_function(type(model), name), model))
        bound += 1
    for module in model.modules():
        cls = type(module)
        for name in getattr(cls, "compiled_methods", ()):
            setattr(module, name, types.MethodType(compiled_function(cls, name), module))
            bound += 1
        name = getattr(cls, "compiled_block", None)
        if name is not None:
            setattr(module, name, types.MethodType(block_function(cls, name), module))
            bound += 1
    return bound
