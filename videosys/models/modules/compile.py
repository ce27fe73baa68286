"""Regional torch.compile (compile=True): each block's branch computations, never the cache hooks.

A block class names the methods that hold its pure tensor work in `compiled_methods` (Latte:
attention, cross-attention and MLP branches). Each (class, method) is compiled once and shared by
every block of that class, so a 28-block stack compiles one graph per branch kind and shape, not
28. The cache hook sites (`module_call`), the stack hooks, the text memos and every cache decision
run eagerly around them; under sequence parallelism the collectives inside a branch are graph
breaks (they run eagerly between compiled pieces).
"""

import types

import torch
from torch import nn

_compiled: dict[tuple[type, str], object] = {}


def compiled_function(cls: type, name: str):
    """torch.compile of cls.name, one per (class, method) for the process."""
    key = (cls, name)
    if key not in _compiled:
        _compiled[key] = torch.compile(getattr(cls, name))
    return _compiled[key]


def compile_regions(model: nn.Module) -> int:
    """Point every block's `compiled_methods` at their compiled functions; returns how many were bound."""
    bound = 0
    for module in model.modules():
        for name in getattr(type(module), "compiled_methods", ()):
            setattr(module, name, types.MethodType(compiled_function(type(module), name), module))
            bound += 1
    return bound
