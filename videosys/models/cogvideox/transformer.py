"""CogVideoX (arXiv 2408.06072): full 3D attention over concatenated text and video tokens.

Loads the `transformer/` folder of THUDM/CogVideoX-2b and THUDM/CogVideoX-5b unchanged: the config
fields and state-dict keys are those of diffusers' CogVideoXTransformer3DModel.

Token layout (C = model width, S = text tokens, N = F * h * w video tokens: F latent frames of
h x w patches). Text and video are two streams, (B, S, C) and (B, N, C), each with its own adaLN
modulation ("expert adaLN"); attention and the MLP see them joined as (B, S + N, C), text first.

Positions: 2b adds a fixed 3D sin-cos table to the video tokens; 5b
(`use_rotary_positional_embeddings`) instead rotates the queries and keys of the video tokens with
3D RoPE. Both tables depend only on the latent grid, so they are built once and cached.

Sequence parallelism (Ulysses): the video tokens are sharded over the sp group, (B, N/sp, C) (padded
when N does not divide), the text tokens are replicated on every rank. Everything but attention
works token by token. Attention switches from sequence-sharded to head-sharded with an all-to-all of
the video q / k / v, takes this rank's heads of the text q / k / v, attends over [text; video] with
complete positions (so RoPE applies as in one process, and padding is cut off before it can be
attended to), and switches back; the text output's heads are gathered so every rank keeps the whole
text stream. The video tokens are gathered before unpatchifying.

Caches (videosys/cache/hooks.py): the block stack carries both streams and its indicator is the
timestep embedding `emb` (a TeaCache-skipped step reuses the residuals of both); each block's joint
self-attention is the module hook point "full" (PAB broadcasts it, communication included), its MLP "mlp".
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.cache.hooks import ModuleHooks
from videosys.core import comm
from videosys.core.parallel import ParallelState
from videosys.models.modules.attention import Attention, FeedForward, sdpa, HeadParallel
from videosys.models.modules.embeddings import TimestepEmbedding, constant_table, sincos_3d, timestep_embedding
from videosys.models.modules.pretrained import PretrainedModel
from videosys.models.modules.rope import apply_rope, rope_3d
from videosys.models.modules.text_memo import TextMemoMixin


@dataclass
class CogVideoXTransformerConfig:
    """diffusers' CogVideoXTransformer3DModel config fields; defaults are CogVideoX-2b's values.

    CogVideoX-5b: num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True.
    """

    num_attention_heads: int = 30
    attention_head_dim: int = 64
    in_channels: int = 16
    out_channels: int | None = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    ofs_embed_dim: int | None = None
    text_embed_dim: int = 4096
    num_layers: int = 30
    dropout: float = 0.0  # inference only: dropout is never applied
    attention_bias: bool = True
    sample_width: int = 90  # latent width the model was trained at (sets the RoPE base grid)
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    patch_size_t: int | None = None
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = False
    use_learned_positional_embeddings: bool = False
    patch_bias: bool = True

    def __post_init__(self):
        # Variants of the CogVideoX 1.5 / image-to-video releases that this model does not implement
        unsupported = {"patch_size_t": self.patch_size_t is not None, "ofs_embed_dim": bool(self.ofs_embed_dim),
                       "use_learned_positional_embeddings": self.use_learned_positional_embeddings}
        for name, present in unsupported.items():
            if present:
                raise ValueError(f"{name}={getattr(self, name)!r} (CogVideoX 1.5 / image-to-video) is not supported; "
                                 "this model implements CogVideoX 1.0 text-to-video (2b, 5b)")
        if self.activation_fn not in ("gelu-approximate", "gelu"):
            raise ValueError(f"unsupported activation_fn {self.activation_fn!r} (CogVideoX uses 'gelu-approximate')")
        if self.timestep_activation_fn != "silu":
            raise ValueError(f"unsupported timestep_activation_fn {self.timestep_activation_fn!r} "
                             "(CogVideoX uses 'silu')")
        dim = self.num_attention_heads * self.attention_head_dim
        if self.use_rotary_positional_embeddings and self.attention_head_dim % 16:
            raise ValueError(f"3D RoPE splits attention_head_dim into t / h / w parts: it must be divisible by 16, "
                             f"got {self.attention_head_dim}")
        if not self.use_rotary_positional_embeddings and dim % 16:
            raise ValueError(f"the 3D sin-cos embedding needs the width (heads x head_dim) divisible by 16, got {dim}")


class ExpertAdaLayerNormZero(nn.Module):
    """One LayerNorm, separate modulation per stream: (B, T_emb) -> shift / scale / gate for video and text.

    Keys `linear` and `norm` (diffusers' CogVideoXLayerNormZero).
    """

    compiled_methods = ("forward",)  # compile=True (models/modules/compile.py)

    def __init__(self, time_embed_dim: int, dim: int, elementwise_affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(time_embed_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor, text: torch.Tensor, emb: torch.Tensor):
        mod = self.linear(F.silu(emb))[:, None]  # (B, 1, 6C)
        shift, scale, gate, text_shift, text_scale, text_gate = mod.chunk(6, dim=-1)
        x = self.norm(x) * (1 + scale) + shift
        text = self.norm(text) * (1 + text_scale) + text_shift
        return x, text, gate, text_gate


class CogVideoXBlock(nn.Module):
    """Expert adaLN -> joint self-attention (qk LayerNorm, optional RoPE) -> expert adaLN -> joint MLP.

    `index` names the block at the caches' module hook points. compile=True (models/modules/compile.py)
    compiles `forward` whole when no module hook is active, else the branch methods (`compiled_methods`) with
    the cache hooks eager around them.
    """

    compiled_block = "forward"
    compiled_methods = ("joint_attention", "mlp_branch")

    def __init__(self, cfg: CogVideoXTransformerConfig, index: int = 0):
        super().__init__()
        self.index = index
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        norm = dict(elementwise_affine=cfg.norm_elementwise_affine, eps=cfg.norm_eps)
        self.norm1 = ExpertAdaLayerNormZero(cfg.time_embed_dim, dim, **norm)
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.attention_head_dim, bias=cfg.attention_bias,
                               qk_norm=True, qk_norm_eps=1e-6)
        self.norm2 = ExpertAdaLayerNormZero(cfg.time_embed_dim, dim, **norm)
        approximate = "tanh" if cfg.activation_fn == "gelu-approximate" else "none"
        self.ff = FeedForward(dim, approximate=approximate)

    def joint_attention(self, text: torch.Tensor, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                        num_tokens: int, sp_group=None) -> torch.Tensor:
        """Self-attention over [text; video]: text (B, S, C) whole, x (B, N_local, C) -> (B, S + N_local, C).

        Ulysses over `sp_group`: the video q / k / v go from sequence- to head-sharded (all N = `num_tokens`
        real tokens, padding cut off), each rank attends with its heads, and the output goes back.
        """
        attn = self.attn1
        b, s = text.shape[:2]
        sp, rank = comm.group_size(sp_group), comm.group_rank(sp_group)
        heads = attn.heads // sp
        joint = torch.cat([text, x], dim=1)  # (B, S + N_local, C)
        qkv = []
        for t in attn.project_qkv(joint):
            t = t.view(b, joint.shape[1], attn.heads, attn.head_dim)  # (B, S + N_local, H, d)
            if sp > 1:
                text_part = t[:, :s, rank * heads:(rank + 1) * heads]  # (B, S, H/sp, d): replicated, take our heads
                video = comm.all_to_all(t[:, s:], sp_group, scatter_dim=2, gather_dim=1, gather_size=num_tokens)
                t = torch.cat([text_part, video], dim=1)  # (B, S + N, H/sp, d)
            qkv.append(t.transpose(1, 2))  # (B, H_local, S + N, d)
        q, k, v = qkv
        # q and k leave their norms (B, H, L, d)-contiguous; v too (one 2 MB copy at 1,056 tokens) makes the CPU flash
        # kernel faster (21.9 -> 20.9 ms at (2, 8, 1056, 32): scripts/bench_cpu_kernels.py)
        v = v.contiguous()
        q, k = attn.norm_q(q), attn.norm_k(k)
        if rotary is not None:  # positions are complete here: the table covers S + N
            q, k = apply_rope(q, *rotary), apply_rope(k, *rotary)
        out = sdpa(q, k, v).transpose(1, 2)  # (B, S + N, H_local, d)
        if sp > 1:
            text_out = comm.gather(out[:, :s], 2, sp_group)  # (B, S, H, d)
            video_out = comm.all_to_all(out[:, s:], sp_group, scatter_dim=1, gather_dim=2)  # (B, N_local, H, d)
            out = torch.cat([text_out, video_out], dim=1)
        return attn.to_out[0](out.reshape(b, out.shape[1], -1))

    def mlp_branch(self, text: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.ff(torch.cat([text, x], dim=1))  # (B, S + N_local, C)

    def forward(self, x: torch.Tensor, text: torch.Tensor, emb: torch.Tensor,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None, hooks: ModuleHooks | None = None,
                num_tokens: int | None = None, sp_group=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N_local, C) video, text (B, S, C), emb (B, T_emb), rotary over S + N tokens -> (x, text)."""
        s = text.shape[1]
        x_in, text_in, gate, text_gate = self.norm1(x, text, emb)
        # cache hook points: an attention a cache reuses skips its compute and, under Ulysses, its all-to-alls
        out = module_call(hooks, "full", self.index, lambda: self.joint_attention(
            text_in, x_in, rotary, num_tokens or x.shape[1], sp_group))  # (B, S + N_local, C)
        x = x + gate * out[:, s:]
        text = text + text_gate * out[:, :s]

        x_in, text_in, gate, text_gate = self.norm2(x, text, emb)
        out = module_call(hooks, "mlp", self.index, lambda: self.mlp_branch(text_in, x_in),
                          block="full")  # (B, S + N_local, C)
        return x + gate * out[:, s:], text + text_gate * out[:, :s]


class CogVideoXPatchEmbed(nn.Module):
    """Latents (B, F, C_in, H, W) -> video tokens (B, F * h * w, C); text states (B, S, C_text) -> (B, S, C)."""

    def __init__(self, cfg: CogVideoXTransformerConfig, dim: int):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_channels, dim, kernel_size=p, stride=p, bias=cfg.patch_bias)
        self.text_proj = nn.Linear(cfg.text_embed_dim, dim)

    def forward(self, latents: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, f = latents.shape[:2]
        x = self.proj(latents.flatten(0, 1))  # (B*F, C, h, w)
        x = x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])  # (B, F*h*w, C), frame-major
        return x, self.text_proj(text)


class FinalAdaLayerNorm(nn.Module):
    """LayerNorm modulated by the timestep embedding, shift first (keys `linear`, `norm`)."""

    def __init__(self, time_embed_dim: int, dim: int, elementwise_affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(time_embed_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(emb))[:, None].chunk(2, dim=-1)  # (B, 1, C) each
        return self.norm(x) * (1 + scale) + shift


@constant_table
def video_sincos_table(dim: int, frames: int, h: int, w: int, spatial_scale: float, temporal_scale: float,
                       device: str, dtype: torch.dtype) -> torch.Tensor:
    return sincos_3d(dim, frames, h, w, spatial_scale, temporal_scale).to(device=device, dtype=dtype)


@constant_table
def joint_rotary_table(d: int, text_len: int, frames: int, h: int, w: int, base: tuple[int, int],
                       device: str) -> tuple[torch.Tensor, torch.Tensor]:
    (top, left), (bottom, right) = rope_crop_region((h, w), base)
    pos_t = torch.arange(frames, dtype=torch.float32)
    pos_h = torch.linspace(top, bottom * (h - 1) / h, h, dtype=torch.float32)
    pos_w = torch.linspace(left, right * (w - 1) / w, w, dtype=torch.float32)
    cos, sin = rope_3d((d // 4, d // 8 * 3, d // 8 * 3), pos_t, pos_h, pos_w)  # (N, d) each
    cos = torch.cat([torch.ones(text_len, d), cos])
    sin = torch.cat([torch.zeros(text_len, d), sin])
    return cos.to(device), sin.to(device)


def rope_crop_region(grid: tuple[int, int], base: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a (h, w) grid sits, resized to keep its aspect, centred in the (H, W) grid trained on.

    Returns ((top, left), (bottom, right)) in base-grid units (the CogVideoX / HunyuanDiT recipe).
    """
    (h, w), (base_h, base_w) = grid, base
    if h / w > base_h / base_w:
        resize_h, resize_w = base_h, int(round(base_h / h * w))
    else:
        resize_h, resize_w = int(round(base_w / w * h)), base_w
    top, left = int(round((base_h - resize_h) / 2.0)), int(round((base_w - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


class CogVideoXTransformer3DModel(HeadParallel, PretrainedModel, TextMemoMixin, CacheMixin):
    config_class = CogVideoXTransformerConfig
    class_name = "CogVideoXTransformer3DModel"
    compiled_forward = "forward"  # compile=True with no stack or module-hook cache: one graph (compile.py)

    def __init__(self, config: CogVideoXTransformerConfig):
        super().__init__()
        self.config = config
        dim = config.num_attention_heads * config.attention_head_dim
        self.out_channels = config.out_channels or config.in_channels
        self.patch_embed = CogVideoXPatchEmbed(config, dim)
        self.time_embedding = TimestepEmbedding(dim, config.time_embed_dim)
        self.transformer_blocks = nn.ModuleList(CogVideoXBlock(config, i) for i in range(config.num_layers))
        norm = dict(elementwise_affine=config.norm_elementwise_affine, eps=config.norm_eps)
        self.norm_final = nn.LayerNorm(dim, **norm)
        self.norm_out = FinalAdaLayerNorm(config.time_embed_dim, dim, **norm)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * self.out_channels)
        self.parallel = ParallelState()

    # ---- fixed position tables, built once per latent grid (constant_table) ---------------------
    def sincos_table(self, frames: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(F * h * w, C) sin-cos table added to the video tokens (2b), in the activations' dtype."""
        cfg = self.config
        return video_sincos_table(cfg.num_attention_heads * cfg.attention_head_dim, frames, h, w,
                                  cfg.spatial_interpolation_scale, cfg.temporal_interpolation_scale, str(device), dtype)

    def rotary_table(self, text_len: int, frames: int, h: int, w: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin, each (S + F * h * w, head_dim), for the joint sequence (5b).

        Text tokens get the identity rotation (cos 1, sin 0), so attention rotates the whole
        sequence while only video tokens move. Video positions: frames 0..F-1; rows and columns
        span the region the grid covers in the base grid of the training resolution.
        """
        cfg = self.config
        base = (cfg.sample_height // cfg.patch_size, cfg.sample_width // cfg.patch_size)
        return joint_rotary_table(cfg.attention_head_dim, text_len, frames, h, w, base, str(device))

    def run_blocks(self, x: torch.Tensor, text: torch.Tensor, emb: torch.Tensor,
                   rotary: tuple[torch.Tensor, torch.Tensor] | None, num_tokens: int, start: int = 0,
                   stop: int | None = None):
        """Blocks start .. stop-1 on video (B, N_local, C) and text (B, S, C): the one place the streams change."""
        sp_group = self.parallel.sp_group
        hooks = self.module_hooks()
        for block in self.transformer_blocks[start:stop]:
            x, text = block(x, text, emb, rotary, hooks=hooks, num_tokens=num_tokens, sp_group=sp_group)
        return x, text

    @staticmethod
    def cache_indicator(emb: torch.Tensor) -> torch.Tensor:
        """TeaCache's indicator: the timestep embedding (B, T_emb), the same on every rank."""
        return emb

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep: torch.Tensor) -> torch.Tensor:
        """(B, F, C_in, H, W) latents, (B, S, C_text) text, (B,) or scalar timesteps -> (B, F, C_out, H, W)."""
        b, f, _, height, width = hidden_states.shape
        cfg = self.config
        p = cfg.patch_size
        h, w = height // p, width // p
        dim = cfg.num_attention_heads * cfg.attention_head_dim

        t_freq = timestep_embedding(timestep.reshape(-1).expand(b), dim, cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = self.time_embedding(t_freq.to(hidden_states.dtype))  # (B, T_emb): TeaCache's indicator
        x, text = self.patch_embed(hidden_states, encoder_hidden_states)  # (B, N, C), (B, S, C)
        rotary = None
        if cfg.use_rotary_positional_embeddings:
            rotary = self.rotary_table(text.shape[1], f, h, w, x.device)
        else:
            x = x + self.sincos_table(f, h, w, x.device, x.dtype)

        sp_group = self.parallel.sp_group
        n = x.shape[1]
        x = comm.split(x, 1, sp_group)  # (B, N_local, C): this rank's video tokens (zero-padded to divide)
        blocks = partial(self.run_blocks, emb=emb, rotary=rotary, num_tokens=n)

        # the block-stack hook point, both streams: a cache may skip, cut short or reuse the stack
        x, text = self.cache_stack(blocks, x, text, indicator=lambda: self.cache_indicator(emb),
                                   num_units=cfg.num_layers)

        x = self.proj_out(self.norm_out(self.norm_final(x), emb))  # (B, N_local, p*p*C_out): per token
        x = comm.gather(x, 1, sp_group, size=n)  # (B, N, p*p*C_out)
        x = x.view(b, f, h, w, self.out_channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, F, C_out, h, p, w, p)
        return x.reshape(b, f, self.out_channels, h * p, w * p)
