"""Work on the text done once per generation instead of once per step.

The text conditioning does not change between the denoising steps of a generation, so neither do
the caption projection nor the keys and values every cross-attention projects from it (Latte,
Open-Sora, Open-Sora-Plan; diffusers recomputes them every step). A `TextMemo` keeps what was
computed from a text tensor while the same tensor comes back: exact, since the result is a pure
function of that tensor. It is cleared per generation (TextMemoMixin.begin_generation, which the cache
hooks call first in CacheMixin.cache_begin), and only used with
autograd off (training needs the graph of each step) and outside compiled graphs.
"""

from typing import Callable

import torch
from torch import nn


def _version(t: torch.Tensor) -> int | None:
    return None if t.is_inference() else t._version


def same_tensor(stored: tuple[torch.Tensor, int | None], b: torch.Tensor) -> bool:
    """b is the stored tensor, or a view of the same memory with the same layout, and neither was edited since
    it was stored (where autograd tracks versions).

    The memo holds its key tensor, so that memory cannot be freed and reused by another tensor while it is
    stored. Inference-mode tensors track no versions: an in-place edit of the text between two steps of one
    generation would go unseen there (no pipeline edits its text).
    """
    a, version = stored
    if (a.data_ptr(), a.shape, a.stride(), a.dtype, a.device) != (b.data_ptr(), b.shape, b.stride(), b.dtype,
                                                                   b.device):
        return False
    return version is None or b.is_inference() or b._version == version


class TextMemo:
    """compute(key) memoised per key tensor; a few keys (the CFG batch and its cond half), most recent kept."""

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: list[tuple[tuple[torch.Tensor, int | None], object]] = []  # ((key, version), value)

    def clear(self) -> None:
        self.entries = []

    def __getstate__(self) -> dict:
        return {"size": self.size, "entries": []}  # a saved or copied model carries no generation's text

    def __call__(self, key: torch.Tensor, compute: Callable[[torch.Tensor], object]):
        # inside a compiled graph (compile=True's whole forward) the text work is recomputed in the graph: a
        # lookup by tensor identity would be a graph break, measured 6% slower on the tiny Latte than the few
        # GEMMs it saves (docs/speed.md)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return compute(key)
        for n, (stored, value) in enumerate(self.entries):
            if same_tensor(stored, key):
                self.entries.append(self.entries.pop(n))
                return value
        value = compute(key)
        self.entries = (self.entries + [((key, _version(key)), value)])[-self.size:]
        return value


def clear_text_memos(model: nn.Module) -> None:
    """Forget every memo of `model` and its modules (a new generation: its text is new)."""
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, TextMemo):
                value.clear()


class TextMemoMixin:
    """A transformer whose modules keep TextMemos (listed before CacheMixin among its bases): its per-generation
    hook forgets them."""

    def begin_generation(self) -> None:
        clear_text_memos(self)
        super().begin_generation()
