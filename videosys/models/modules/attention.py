"""Attention and feed-forward layers shared by the families (diffusers key names)."""

import torch
import torch.nn.functional as F
from torch import nn

from videosys.models.modules.rope import apply_rope


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, heads, L, d) attention through PyTorch's fused kernels; `mask` is boolean, True = attend."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """Multi-head attention: to_q / to_k / to_v / to_out.0, self- or cross-attention.

    forward(x (B, L, C), context (B, S, Cc) or None, mask (B, S) bool or None,
            rotary (cos, sin) each (L, head_dim) or None) -> (B, L, C).

    qk_norm adds a per-head LayerNorm on queries and keys (keys norm_q / norm_k, diffusers'
    qk_norm="layer_norm"). `rotary` rotates queries and keys of a self-attention (RoPE, see rope.py).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool = False,
                 cross_attention_dim: int | None = None, out_bias: bool = True, qk_norm: bool = False,
                 qk_norm_eps: float = 1e-6):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        kv_dim = cross_attention_dim or dim
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=out_bias), nn.Dropout(0.0)])
        self.norm_q = nn.LayerNorm(head_dim, eps=qk_norm_eps) if qk_norm else None
        self.norm_k = nn.LayerNorm(head_dim, eps=qk_norm_eps) if qk_norm else None

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, n, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if rotary is not None and context is not None:
            raise ValueError("rotary position embedding is for self-attention; got a context")
        context = x if context is None else context
        q, k, v = (self.split_heads(p(t)) for p, t in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        if rotary is not None:
            q, k = apply_rope(q, *rotary), apply_rope(k, *rotary)
        if mask is not None:
            mask = mask[:, None, None, :].bool()  # (B, 1, 1, S): broadcast over heads and queries
        out = sdpa(q, k, v, mask)
        b, _, n, _ = out.shape
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, -1))


class GELUProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, approximate: str = "tanh"):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with keys net.0.proj and net.2."""

    def __init__(self, dim: int, mult: int = 4, approximate: str = "tanh"):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, dim * mult, approximate), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x
