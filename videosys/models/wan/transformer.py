"""Wan 2.1 / 2.2 (arXiv 2503.20314): one stream of video tokens, full 3D self-attention, text by cross-attention.

Loads the `transformer/` folder of the Wan-AI/...-Diffusers releases unchanged: the config fields and state-dict
keys are those of diffusers' WanTransformer3DModel. `WanTransformer3DModel.from_original` loads the original
repositories' single-file layout (keys blocks.N.self_attn.q, head.head, time_projection.1, ...), renamed by
`convert_original_state_dict`.

Token layout (C = model width, N = F * h * w video tokens: F latent frames of h x w patches after a
(p_t, p_h, p_w) patch): the video tokens (B, N, C) are the only stream. Each block: adaLN-modulated
self-attention (RMSNorm on q / k across all heads, 3D RoPE), cross-attention to the text (B, 512, C) and,
for Wan2.1 I2V / FLF2V, to the CLIP image tokens (B, 257, C) with their own keys and values (the two
attention outputs are summed before the output projection), then an adaLN-modulated MLP.

Timesteps: one per sample (B,) for Wan2.1 and the Wan2.2 A14B experts; one per token (B, N) for Wan2.2
TI2V-5B (its first-frame tokens keep timestep 0 during image-to-video): the modulation is then per token,
(B, N, 6, C).

Numerics as diffusers and the original release: the LayerNorms, the modulation and the gated residual adds
run in fp32 whatever the weights' dtype; from_pretrained / from_original keep the modules diffusers keeps in
fp32 (`keep_in_fp32`: time embedder, modulation tables, the block norms) in fp32 when loading in bf16 / fp16.

Sequence parallelism (Ulysses): the video tokens are sharded over the sp group, (B, N/sp, C) (zero-padded
when N does not divide), and so is a per-token timestep. Everything but self-attention works token by
token; cross-attention runs on the local tokens against the whole text and image keys / values (replicated
on every rank: exact with no communication). Self-attention normalises q / k per token (the RMSNorm spans
every head, so before the heads are split), switches them from sequence- to head-sharded with an all-to-all,
cuts the padding off (it is never attended to), rotates with the RoPE of the complete positions, attends
with this rank's heads and switches back. The tokens are gathered before unpatchifying.

Caches (videosys/cache/hooks.py): the block stack's indicator is the timestep projection (B, 6, C)
(per token: this rank's real tokens, (B, N_local, 6, C)): TeaCache4Wan2.1 (ali-vilab/TeaCache) measures
`e0`, the time_projection output, with its recommended use_ret_steps=True, and `e`, the time embedding
(B, C) / (B, N_local, C), without it: `indicator_source = "e"` (set by the pipeline from its TeaCache mode).
Module hook points per block (block kind "full"): "full" (self-attention, ungated output, its all-to-alls
included), "cross" (the text cross-attention, image cross-attention included: one site, they
share the query and output projection) and "mlp" (ungated).
"""

import json
import math
import os
import re
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.cache.hooks import ModuleHooks
from videosys.core import comm
from videosys.core.parallel import ParallelState
from videosys.models.modules.adaln import modulate
from videosys.models.modules.attention import GELUProj, sdpa, HeadParallel
from videosys.models.modules.embeddings import CaptionProjection, TimestepEmbedding, constant_table, timestep_embedding
from videosys.models.modules.pretrained import PretrainedModel, config_from_dict
from videosys.models.modules.rope import apply_rope
from videosys.models.modules.text_memo import TextMemo
from videosys.utils.hub import _load_safetensors, read_state_dict


@dataclass
class WanTransformerConfig:
    """diffusers' WanTransformer3DModel config fields; defaults are Wan2.1-T2V-1.3B's values
    (Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json).

    Wan2.1-T2V-14B: num_attention_heads=40, ffn_dim=13824, num_layers=40. Wan2.1-I2V-14B: those plus
    in_channels=36, image_dim=1280, added_kv_proj_dim=5120. Wan2.2-T2V / I2V-A14B: two experts of the 14B
    shape (I2V: in_channels=36, no image_dim). Wan2.2-TI2V-5B: num_attention_heads=24, ffn_dim=14336,
    in_channels=out_channels=48, num_layers=30.
    """

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None  # CLIP image features (1280) for Wan2.1 I2V / FLF2V
    added_kv_proj_dim: int | None = None  # the image keys / values' input width (the model width)
    rope_max_seq_len: int = 1024  # positions per axis the RoPE tables cover
    pos_embed_seq_len: int | None = None  # FLF2V: learned positions of the 2 x 257 image tokens

    def __post_init__(self):
        self.patch_size = tuple(self.patch_size)  # config.json stores a list
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size is (t, h, w), got {self.patch_size}")
        # diffusers builds the RMSNorm across heads whatever this field says; we accept only that value
        if self.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"unsupported qk_norm {self.qk_norm!r} (Wan uses 'rms_norm_across_heads')")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ValueError("image_dim and added_kv_proj_dim come together (Wan2.1 I2V / FLF2V) or not at all")
        if self.attention_head_dim % 2 or self.attention_head_dim < 6:
            raise ValueError(f"3D RoPE splits attention_head_dim into t / h / w pairs, got {self.attention_head_dim}")

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


# ---- layers -----------------------------------------------------------------------------------------------


def layer_norm_fp32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm` (a LayerNorm, or Identity) computed in fp32, returned in fp32 (diffusers' FP32LayerNorm on
    x.float(); the original's WanLayerNorm)."""
    if isinstance(norm, nn.Identity):
        return x.float()
    weight = None if norm.weight is None else norm.weight.float()
    bias = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps)


class WanAttention(nn.Module):
    """Keys to_q / to_k / to_v / to_out.0, norm_q / norm_k (RMSNorm over all heads at once), and for the
    image cross-attention add_k_proj / add_v_proj / norm_added_k (diffusers' WanAttention)."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float, added_kv_proj_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(inner, eps=eps)
        self.norm_k = nn.RMSNorm(inner, eps=eps)
        self.add_k_proj = self.add_v_proj = None
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, inner)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, inner)
            self.norm_added_k = nn.RMSNorm(inner, eps=eps)
        self.kv_memo = TextMemo()  # a cross-attention's text keys and values, once per generation
        self.image_kv_memo = TextMemo()  # and the image tokens'

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, n, d)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text's keys (normed) and values, each (B, H, S, d); once per text tensor."""
        return self.kv_memo(context, lambda c: (self.split_heads(self.norm_k(self.to_k(c))),
                                                self.split_heads(self.to_v(c))))

    def image_kv(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tokens' keys (normed) and values, each (B, H, S_img, d); once per image tensor."""
        return self.image_kv_memo(image, lambda c: (self.split_heads(self.norm_added_k(self.add_k_proj(c))),
                                              self.split_heads(self.add_v_proj(c))))


class WanFeedForward(nn.Module):
    """Linear -> tanh GELU -> Linear with keys net.0.proj / net.2 (any hidden width: Wan's ffn_dim is no
    multiple of the model width); `approximate="none"` for the image embedder's MLP."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, approximate: str = "tanh"):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, hidden, approximate), nn.Dropout(0.0), nn.Linear(hidden, out or dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


# ---- RoPE ---------------------------------------------------------------------------------------------------


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) channels of a head: h and w get 2 * (d // 6) each, t the rest (44 / 42 / 42 for d = 128;
    the original's split of d/2 complex pairs into c - 2 * (c // 3), c // 3, c // 3)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@constant_table
def wan_rotary_table(head_dim: int, frames: int, h: int, w: int, theta: float,
                     device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin, each (F * h * w, head_dim) fp32, interleaved pairs, tokens in (F, h, w) row-major order.

    Angles pos * theta^(-2i / d_axis) per axis, computed in fp64 before cos / sin (the original's
    rope_params and diffusers' WanRotaryPosEmbed), positions 0.. on every axis."""
    cos, sin = [], []
    for axis, (dim, n) in enumerate(zip(rope_axis_dims(head_dim), (frames, h, w))):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
        angles = torch.outer(torch.arange(n, dtype=torch.float64), freqs).repeat_interleave(2, dim=1)  # (n, dim)
        shape = [1, 1, 1, dim]
        shape[axis] = n  # this axis' positions along its grid dimension, broadcast over the other two
        cos.append(angles.cos().float().view(shape).expand(frames, h, w, dim))
        sin.append(angles.sin().float().view(shape).expand(frames, h, w, dim))
    out = [torch.cat(t, dim=-1).reshape(frames * h * w, head_dim).to(device) for t in (cos, sin)]  # [t | h | w]
    return out[0], out[1]


# ---- the block ------------------------------------------------------------------------------------------------


class WanBlock(nn.Module):
    """Modulated self-attention -> (normed) cross-attention to text (+ image) -> modulated MLP.

    Keys as diffusers' WanTransformerBlock: norm1 / norm3 (no weights: the self-attention and MLP norms),
    norm2 (the cross-attention norm, affine, when cross_attn_norm), attn1, attn2, ffn.net.*, scale_shift_table
    (1, 6, C): shift / scale / gate of the self-attention, then of the MLP.

    `index` names the block at the caches' module hook points. compile=True (models/modules/compile.py)
    compiles `residual_stream` whole when no module hook is active, else the branch methods.
    """

    compiled_block = "residual_stream"
    compiled_methods = ("attn_branch", "cross_branch", "mlp_branch")

    def __init__(self, cfg: WanTransformerConfig, index: int = 0):
        super().__init__()
        self.index = index
        dim, heads, head_dim = cfg.dim, cfg.num_attention_heads, cfg.attention_head_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim, heads, head_dim, cfg.eps)
        self.attn2 = WanAttention(dim, heads, head_dim, cfg.eps, added_kv_proj_dim=cfg.added_kv_proj_dim)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.ffn = WanFeedForward(dim, cfg.ffn_dim)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def modulation(self, t_mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """t_mod (B, 6, C) or per token (B, N_local, 6, C) -> 6 fp32 tensors (B, 1, C) or (B, N_local, C)."""
        mod = self.scale_shift_table.float() + t_mod.float()  # (B, 6, C) or (B, N, 6, C)
        if mod.ndim == 3:
            mod = mod[:, None]  # (B, 1, 6, C)
        return mod.unbind(2)

    def self_attention(self, h: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], num_tokens: int,
                       sp_group=None) -> torch.Tensor:
        """(B, N_local, C) modulated tokens -> (B, N_local, C), attending over all N = `num_tokens` tokens.

        Ulysses: q / k / v go from sequence- to head-sharded ((B, N_local, H, d) -> (B, N, H/sp, d), the padding
        cut off), this rank's heads attend, and the output goes back."""
        attn = self.attn1
        b, n_local, _ = h.shape
        q, k, v = attn.norm_q(attn.to_q(h)), attn.norm_k(attn.to_k(h)), attn.to_v(h)  # (B, N_local, inner)
        qkv = []
        for t in (q, k, v):
            t = t.view(b, n_local, attn.heads, attn.head_dim)  # (B, N_local, H, d)
            t = comm.all_to_all(t, sp_group, scatter_dim=2, gather_dim=1, gather_size=num_tokens)  # (B, N, H/sp, d)
            qkv.append(t.transpose(1, 2))  # (B, H_local, N, d)
        q, k, v = qkv
        q, k = apply_rope(q, *rotary), apply_rope(k, *rotary)  # complete positions: the table covers all N
        out = sdpa(q, k, v.contiguous()).transpose(1, 2)  # (B, N, H_local, d)
        out = comm.all_to_all(out, sp_group, scatter_dim=1, gather_dim=2)  # (B, N_local, H, d)
        return attn.to_out[0](out.reshape(b, n_local, -1))

    def attn_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...], rotary: tuple[torch.Tensor, torch.Tensor],
                    num_tokens: int, sp_group=None) -> torch.Tensor:
        """Self-attention of the modulated tokens (ungated: the gate is applied in fp32 by the residual add)."""
        h = modulate(layer_norm_fp32(self.norm1, x), mod[0], mod[1]).to(x.dtype)
        return self.self_attention(h, rotary, num_tokens, sp_group)

    def cross_branch(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                     kv_img: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """Cross-attention of the local tokens to the whole text (and image) keys / values: (B, N_local, C)."""
        attn = self.attn2
        b, n, _ = x.shape
        q = attn.split_heads(attn.norm_q(attn.to_q(layer_norm_fp32(self.norm2, x).to(x.dtype))))  # (B, H, N_local, d)
        out = sdpa(q, *kv)  # (B, H, N_local, d)
        if kv_img is not None:  # I2V: the image tokens' own attention, summed before the output projection
            out = out + sdpa(q, *kv_img)
        return attn.to_out[0](out.transpose(1, 2).reshape(b, n, -1))

    def mlp_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """MLP of the modulated tokens (ungated)."""
        return self.ffn(modulate(layer_norm_fp32(self.norm3, x), mod[3], mod[4]).to(x.dtype))

    def forward(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor,
                image_context: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor],
                hooks: ModuleHooks | None = None, num_tokens: int | None = None, sp_group=None) -> torch.Tensor:
        """x (B, N_local, C), t_mod (B, 6, C) or (B, N_local, 6, C), context (B, S, C) projected text,
        image_context (B, S_img, C) or None, rotary over all N tokens -> (B, N_local, C)."""
        # the text's (and image's) keys and values: once per generation (text_memo.py), eagerly
        kv = self.attn2.context_kv(context)
        kv_img = None if image_context is None else self.attn2.image_kv(image_context)
        return self.residual_stream(x, t_mod, kv, kv_img, rotary, num_tokens or x.shape[1], sp_group, hooks=hooks)

    def residual_stream(self, x: torch.Tensor, t_mod: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                        kv_img: tuple[torch.Tensor, torch.Tensor] | None, rotary: tuple[torch.Tensor, torch.Tensor],
                        num_tokens: int, sp_group=None, hooks: ModuleHooks | None = None) -> torch.Tensor:
        """The block on (B, N_local, C) tokens (`compiled_block`: compiled whole when hooks is None)."""
        mod = self.modulation(t_mod)
        # cache hook points on the ungated branch outputs (what diffusers' PAB hooks on Wan: attn1 / attn2 outputs);
        # an attention a cache reuses skips its compute and, under Ulysses, its all-to-alls
        out = module_call(hooks, "full", self.index, lambda: self.attn_branch(x, mod, rotary, num_tokens, sp_group))
        x = (x.float() + out * mod[2]).to(x.dtype)
        x = x + module_call(hooks, "cross", self.index, lambda: self.cross_branch(x, kv, kv_img), block="full")
        out = module_call(hooks, "mlp", self.index, lambda: self.mlp_branch(x, mod), block="full")
        return (x.float() + out.float() * mod[5]).to(x.dtype)


# ---- embeddings ----------------------------------------------------------------------------------------------


class WanImageEmbedding(nn.Module):
    """CLIP image tokens (B, 257, 1280) -> (B, 257, C): LayerNorm -> Linear -> GELU -> Linear -> LayerNorm, the
    norms in fp32 (keys norm1, ff.net.*, norm2; FLF2V adds pos_embed (1, 514, 1280) over both images' tokens)."""

    def __init__(self, image_dim: int, dim: int, pos_embed_seq_len: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(image_dim)  # eps 1e-5: torch's default, as the original's nn.LayerNorm
        self.ff = WanFeedForward(image_dim, image_dim, out=dim, approximate="none")
        self.norm2 = nn.LayerNorm(dim)
        self.pos_embed = None
        if pos_embed_seq_len is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_seq_len, image_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:  # FLF2V: (2B, 257, D) first / last frame -> (B, 514, D)
            image = image.reshape(-1, self.pos_embed.shape[1], image.shape[-1]) + self.pos_embed
        h = layer_norm_fp32(self.norm1, image).to(image.dtype)
        return layer_norm_fp32(self.norm2, self.ff(h)).to(image.dtype)


class WanConditionEmbedder(nn.Module):
    """Timestep, text and image embeddings (keys time_embedder.linear_1/2, time_proj, text_embedder.linear_1/2,
    image_embedder.*: diffusers' WanTimeTextImageEmbedding)."""

    def __init__(self, cfg: WanTransformerConfig):
        super().__init__()
        dim = cfg.dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = CaptionProjection(cfg.text_dim, dim)  # Linear -> tanh GELU -> Linear
        self.image_embedder = None
        if cfg.image_dim is not None:
            self.image_embedder = WanImageEmbedding(cfg.image_dim, dim, cfg.pos_embed_seq_len)

    def time(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(M,) timesteps -> temb (M, C) in `dtype`, t_mod (M, 6C): the [cos | sin] sinusoidal embedding
        (flip_sin_to_cos, shift 0, in fp32), the time MLP in its own dtype, SiLU, time_proj."""
        freq = timestep_embedding(timestep, self.freq_dim, flip_sin_to_cos=True, freq_shift=0)
        temb = self.time_embedder(freq.to(self.time_embedder.linear_1.weight.dtype)).to(dtype)
        t_mod = self.time_proj(F.silu(temb).to(self.time_proj.weight.dtype))
        return temb, t_mod


# ---- the original Wan single-file layout ---------------------------------------------------------------------

# original module path -> ours (diffusers'); a key is renamed by its longest matching module prefix. Sources: the
# original wan/modules/model.py (WanModel, WanAttentionBlock, Head, MLPProj) and diffusers' WanTransformer3DModel.
ORIGINAL_TOP_LEVEL = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}
ORIGINAL_BLOCK = {  # under blocks.N.
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    # the original's norm3 is the cross-attention norm (its norm2, before the MLP, has no weights): our norm2
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "modulation": "scale_shift_table",
}
# what repackaged single files put in front of the keys (ComfyUI: model.diffusion_model.)
ORIGINAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old in sorted(table, key=len, reverse=True):  # the longest prefix first: cross_attn.k_img before .k
        if key == old or key.startswith(old + "."):
            return table[old] + key[len(old):]
    return None


def convert_original_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original Wan checkpoint's state dict (blocks.N.self_attn.q.weight, head.head.weight, ...) with our
    (diffusers') key names; an unknown key is an error, not dropped."""
    out, unknown = {}, []
    for key, value in state.items():
        name = key
        for prefix in ORIGINAL_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        block = re.match(r"blocks\.(\d+)\.(.+)", name)
        if block:
            rest = _rename(block.group(2), ORIGINAL_BLOCK)
            new = None if rest is None else f"blocks.{block.group(1)}.{rest}"
        else:
            new = _rename(name, ORIGINAL_TOP_LEVEL)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise KeyError(f"keys of no Wan original layout ({len(unknown)}): {', '.join(sorted(unknown)[:12])}")
    return out


def to_original_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (diffusers') state dict with the original Wan key names: the inverse of convert_original_state_dict."""
    top = {v: k for k, v in ORIGINAL_TOP_LEVEL.items()}
    block_table = {v: k for k, v in ORIGINAL_BLOCK.items()}
    out = {}
    for key, value in state.items():
        block = re.match(r"blocks\.(\d+)\.(.+)", key)
        rest = _rename(block.group(2) if block else key, block_table if block else top)
        if rest is None:
            raise KeyError(f"no original Wan name for {key!r}")
        out[f"blocks.{block.group(1)}.{rest}" if block else rest] = value
    return out


def config_from_original(values: dict, state: dict[str, torch.Tensor] | None = None) -> WanTransformerConfig:
    """Our config from an original release's config.json (WanModel fields: dim, num_heads, in_dim, model_type, ...).

    The image branch: from `state` (converted keys) when given, as its weights' shapes say; else from model_type:
    i2v / flf2v take CLIP tokens 1280 wide (open-clip ViT-H/14), flf2v 2 x 257 learned image positions (the
    original's FIRST_LAST_FRAME_CONTEXT_TOKEN_NUMBER). Wan2.2 I2V-A14B says model_type "i2v" too but has no image
    branch: only its weights tell."""
    dim, heads = values["dim"], values["num_heads"]
    image_dim = added_kv = pos_len = None
    if state is not None:
        if "condition_embedder.image_embedder.norm1.weight" in state:
            image_dim = state["condition_embedder.image_embedder.norm1.weight"].shape[0]
            added_kv = state["blocks.0.attn2.add_k_proj.weight"].shape[1]
        if "condition_embedder.image_embedder.pos_embed" in state:
            pos_len = state["condition_embedder.image_embedder.pos_embed"].shape[1]
    elif values.get("model_type", "t2v") in ("i2v", "flf2v"):
        image_dim, added_kv = 1280, dim
        pos_len = 2 * 257 if values["model_type"] == "flf2v" else None
    return WanTransformerConfig(
        patch_size=tuple(values.get("patch_size", (1, 2, 2))), num_attention_heads=heads,
        attention_head_dim=dim // heads, in_channels=values.get("in_dim", 16), out_channels=values.get("out_dim", 16),
        text_dim=values.get("text_dim", 4096), freq_dim=values.get("freq_dim", 256), ffn_dim=values["ffn_dim"],
        num_layers=values["num_layers"], cross_attn_norm=values.get("cross_attn_norm", True),
        eps=values.get("eps", 1e-6), image_dim=image_dim, added_kv_proj_dim=added_kv, pos_embed_seq_len=pos_len)


def read_original_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The weights of an original release: one .safetensors file, or a folder of shards (with an index json)."""
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return _load_safetensors(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state)
    return read_state_dict(path)


# ---- the model -------------------------------------------------------------------------------------------------


class WanTransformer3DModel(HeadParallel, PretrainedModel, CacheMixin):
    config_class = WanTransformerConfig
    class_name = "WanTransformer3DModel"
    compiled_forward = "forward"  # compile=True with no stack or module-hook cache: one graph (compile.py)
    # what diffusers keeps in fp32 when loading in a lower precision (its _keep_in_fp32_modules; RoPE tables are
    # built in fp32 here anyway): matched against the names' dotted parts
    keep_in_fp32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")
    # the I2V releases carry attn2.norm_added_q, which no forward reads (diffusers ignores it on load too:
    # WanTransformer3DModel._keys_to_ignore_on_load_unexpected)
    release_only = ("attn2.norm_added_q",)

    def __init__(self, config: WanTransformerConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.out_channels = config.out_channels or config.in_channels
        p = config.patch_size
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=p, stride=p)
        self.condition_embedder = WanConditionEmbedder(config)
        self.blocks = nn.ModuleList(WanBlock(config, i) for i in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim, eps=config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, self.out_channels * math.prod(p))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.text_memo = TextMemo()  # the text embedding, once per generation
        self.image_memo = TextMemo()  # the image tokens' embedding, once per generation
        self.parallel = ParallelState()

    # ---- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_original(cls, path_or_state_dict: str | dict, config: WanTransformerConfig | dict | None = None,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        """An original Wan release (Wan-AI/Wan2.1-T2V-1.3B, ...): a .safetensors file, a folder of shards with an
        index json, or its state dict. `config` (ours, or the original's config.json dict) defaults to the
        folder's config.json in the original names."""
        source = "<state dict>"
        if isinstance(path_or_state_dict, dict):
            state = path_or_state_dict
        else:
            source = path_or_state_dict
            state = read_original_checkpoint(path_or_state_dict)
            if config is None:
                path = path_or_state_dict
                with open(os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")) as f:
                    config = json.load(f)
        if config is None:
            raise ValueError("from_original needs a config with a state dict")
        state = convert_original_state_dict(state)
        if isinstance(config, dict):  # the original's config.json (dim, num_heads, ...) or ours
            config = (config_from_original(config, state) if "dim" in config
                      else config_from_dict(cls.config_class, config))
        return cls.from_state_dict(state, config, dtype, device, source=source)

    # ---- forward ---------------------------------------------------------------------------------------------
    def rotary_table(self, frames: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin, each (F * h * w, head_dim) fp32, over the latent grid (positions from 0 on each axis)."""
        if max(frames, h, w) > self.config.rope_max_seq_len:
            raise ValueError(f"a latent grid of {(frames, h, w)} patches passes rope_max_seq_len="
                             f"{self.config.rope_max_seq_len} positions on an axis")
        return wan_rotary_table(self.config.attention_head_dim, frames, h, w, 10000.0, str(device))

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """(B, S, text_dim) -> (B, S, C), once per text tensor."""
        return self.text_memo(text, self.condition_embedder.text_embedder)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 257, image_dim) CLIP tokens -> (B, 257, C), once per image tensor."""
        if self.condition_embedder.image_embedder is None:
            raise ValueError("encoder_hidden_states_image given to a transformer without an image branch "
                             "(image_dim is None: a T2V / TI2V / Wan2.2 checkpoint)")
        return self.image_memo(image, self.condition_embedder.image_embedder)

    def run_blocks(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor,
                   image_context: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor], num_tokens: int,
                   start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks start .. stop-1 on (B, N_local, C) tokens."""
        sp_group = self.parallel.sp_group
        hooks = self.module_hooks()
        for block in self.blocks[start:stop]:
            x = block(x, t_mod, context, image_context, rotary, hooks=hooks, num_tokens=num_tokens, sp_group=sp_group)
        return x

    indicator_source = "e0"  # TeaCache's indicator: "e0" (the timestep projection) or "e" (the time embedding)

    def cache_indicator(self, t_mod: torch.Tensor, num_tokens: int, per_token: bool = False) -> torch.Tensor:
        """TeaCache's indicator: the timestep projection (or embedding, `indicator_source`), (B, 6, C) / (B, C)
        (the same on every rank) or per token (B, N_local, ...), this rank's real tokens only."""
        if not per_token:
            return t_mod
        start, stop = comm.shard_range(num_tokens, self.parallel.sp_size, self.parallel.sp_rank)
        return t_mod[:, : stop - start]

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, F, H, W) latents, timesteps (B,) / scalar or per token (B, N), (B, S, text_dim) text (S = 512
        for the releases), optional (B, 257, image_dim) CLIP image tokens -> (B, C_out, F, H, W)."""
        b, _, frames, height, width = hidden_states.shape
        cfg = self.config
        p_t, p_h, p_w = cfg.patch_size
        f, h, w = frames // p_t, height // p_h, width // p_w
        n = f * h * w
        dtype = hidden_states.dtype
        sp_group = self.parallel.sp_group

        x = self.patch_embedding(hidden_states)  # (B, C, F', h, w)
        x = comm.split(x.flatten(2).transpose(1, 2), 1, sp_group)  # (B, N_local, C): this rank's tokens, padded

        if timestep.ndim == 2:  # per token (Wan2.2 TI2V): (B, N) -> this rank's (B, N_local), padding timestep 0
            if timestep.shape[1] != n:
                raise ValueError(f"per-token timesteps must be (B, {n}) for this latent grid, "
                                 f"got {tuple(timestep.shape)}")
            t_local = comm.split(timestep.expand(b, n), 1, sp_group)
            temb, t_mod = self.condition_embedder.time(t_local.reshape(-1), dtype)
            temb = temb.view(b, -1, cfg.dim)  # (B, N_local, C)
            t_mod = t_mod.view(b, -1, 6, cfg.dim)  # (B, N_local, 6, C)
        else:
            temb, t_mod = self.condition_embedder.time(timestep.reshape(-1).expand(b), dtype)  # (B, C), (B, 6C)
            t_mod = t_mod.view(b, 6, cfg.dim)  # (B, 6, C)
        context = self.embed_text(encoder_hidden_states)  # (B, S, C)
        image_context = None
        if encoder_hidden_states_image is not None:
            image_context = self.embed_image(encoder_hidden_states_image)  # (B, 257, C)
        rotary = self.rotary_table(f, h, w, x.device)
        blocks = partial(self.run_blocks, t_mod=t_mod, context=context, image_context=image_context, rotary=rotary,
                         num_tokens=n)

        # the block-stack hook point: a cache may skip, cut short or reuse the stack (TeaCache4Wan2.1's indicator:
        # the timestep projection e0)
        source = t_mod if self.indicator_source == "e0" else temb
        x = self.cache_stack(blocks, x, indicator=lambda: self.cache_indicator(source, n, timestep.ndim == 2),
                             num_units=cfg.num_layers)

        if temb.ndim == 2:
            temb = temb[:, None]  # (B, 1, C)
        shift, scale = (self.scale_shift_table.float()[:, None] + temb.float()[:, :, None]).unbind(2)  # (B, 1|N, C)
        x = self.proj_out(modulate(layer_norm_fp32(self.norm_out, x), shift, scale).to(dtype))  # (B, N_local, P*C_out)
        x = comm.gather(x, 1, sp_group, size=n)  # (B, N, p_t*p_h*p_w*C_out)
        x = x.view(b, f, h, w, p_t, p_h, p_w, self.out_channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, self.out_channels, f * p_t, h * p_h, w * p_w)  # (B, C_out, F, H, W)
