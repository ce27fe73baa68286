"""Attention and feed-forward layers shared by the families (diffusers key names)."""

import torch
import torch.nn.functional as F
from torch import nn

from videosys.models.modules.rope import apply_rope
from videosys.models.modules.text_memo import TextMemo


class HeadParallel:
    """A model whose sequence parallelism is Ulysses: each sp rank attends with whole attention heads, so the sp
    size must divide `config.num_attention_heads` (refused when the mesh is joined, before any step)."""

    def set_parallel(self, state) -> None:
        heads = self.config.num_attention_heads
        if heads % state.sp_size:
            raise ValueError(f"sequence parallelism (Ulysses) splits the attention heads over the sp group: "
                             f"num_attention_heads={heads} is not divisible by sp size {state.sp_size}")
        self.parallel = state


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, heads, L, d) attention through PyTorch's fused kernels; `mask` is boolean, True = attend."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _fuse_after_load(module: "Attention", incompatible_keys) -> None:
    """load_state_dict(assign=True) gave the q / k / v parameters new tensors: fuse them again (a module-level
    function, not a lambda, so the module still pickles)."""
    module.fuse_qkv()


class Attention(nn.Module):
    """Multi-head attention: to_q / to_k / to_v / to_out.0, self- or cross-attention.

    forward(x (B, L, C), context (B, S, Cc) or None, mask (B, S) bool or None,
            rotary (cos, sin) each (L, head_dim) or None) -> (B, L, C).

    qk_norm adds a per-head LayerNorm on queries and keys (keys norm_q / norm_k, diffusers'
    qk_norm="layer_norm"). `rotary` rotates queries and keys of a self-attention (RoPE, see rope.py).

    Fast paths, same maths: a self-attention's to_q / to_k / to_v weights are rows of one buffer, so with
    autograd off one GEMM projects all three (the state dict keeps the three official keys); a
    cross-attention projects the keys and values of a given context once (`context_kv`, see text_memo.py).
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
        self.kv_memo = TextMemo()
        self.qkv_fused: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if cross_attention_dim is None:
            self.fuse_qkv()
            self.register_load_state_dict_post_hook(_fuse_after_load)

    @torch.no_grad()
    def fuse_qkv(self) -> None:
        """Move the q / k / v weights (and biases) into one (3 * inner, dim) buffer and point the parameters at
        its rows (the Parameter objects stay: optimizers and the state dict see no change)."""
        with torch.inference_mode(False):
            projs = (self.to_q, self.to_k, self.to_v)
            weight = torch.cat([p.weight.detach() for p in projs])
            bias = torch.cat([p.bias.detach() for p in projs]) if projs[0].bias is not None else None
            for n, p in enumerate(projs):
                rows = slice(n * p.out_features, (n + 1) * p.out_features)
                p.weight.data = weight[rows]
                if bias is not None:
                    p.bias.data = bias[rows]
        self.qkv_fused = (weight, bias)

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.qkv_fused is not None:  # a deepcopy / unpickle copies the buffer and the parameters apart
            self.fuse_qkv()

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        if self.qkv_fused is not None:  # .to(device / dtype) gave each parameter its own memory again
            self.fuse_qkv()
        return module

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of a self-attention, each (B, n, inner): one GEMM with autograd off, three with it on or
        under torch.compile (inductor's graph over the fused GEMM's strided q / k / v thirds measured 1.28x
        slower on CPU than over three contiguous projections: scripts/bench_vs_diffusers.py, docs/speed.md)."""
        if self.qkv_fused is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.to_q(x), self.to_k(x), self.to_v(x)
        return F.linear(x, *self.qkv_fused).chunk(3, dim=-1)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a cross-attention's context, each (B, heads, S, d); once per context tensor."""
        return self.kv_memo(context, lambda c: (self.split_heads(self.to_k(c)), self.split_heads(self.to_v(c))))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, n, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`kv`: the context's keys and values from `context_kv` (a caller that keeps the memo out of a
        compiled region passes them); else they come from `context`."""
        if rotary is not None and (context is not None or kv is not None):
            raise ValueError("rotary position embedding is for self-attention; got a context")
        if kv is None and context is None:
            q, k, v = (self.split_heads(t) for t in self.project_qkv(x))
        else:
            q = self.split_heads(self.to_q(x))
            k, v = self.context_kv(context) if kv is None else kv
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        if rotary is not None:
            q, k = apply_rope(q, *rotary), apply_rope(k, *rotary)
        if mask is not None:
            mask = mask[:, None, None, :].bool()  # (B, 1, 1, S): broadcast over heads and queries
        out = sdpa(q, k, v, mask)
        b, _, n, _ = out.shape
        return self.to_out[0](out.transpose(1, 2).reshape(b, n, -1))


def gelu_fresh(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """GELU of a tensor nothing else holds (a projection's fresh output): in place with autograd off, so no
    second buffer is allocated (an 8192 x 256 -> 1024 fc1 + GELU: 66.9 -> 54.3 ms on one CPU core, its fresh 33 MB
    output page-faulted in at every call otherwise; scripts/bench_cpu_kernels.py); out of place with autograd on or
    under torch.compile."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return F.gelu(x, approximate=approximate)
    return torch.ops.aten.gelu_(x, approximate=approximate)


class GELUProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, approximate: str = "tanh"):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_fresh(self.proj(x), self.approximate)


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear with keys net.0.proj and net.2."""

    def __init__(self, dim: int, mult: int = 4, approximate: str = "tanh"):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, dim * mult, approximate), nn.Dropout(0.0), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class Mlp(nn.Module):
    """fc1 -> tanh GELU -> fc2, timm's Mlp and its key names (Open-Sora, CascadeV)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_fresh(self.fc1(x)))
