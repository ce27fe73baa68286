"""Open-Sora 1.2 STDiT3: pairs of spatial and temporal transformer blocks.

Loads hpcai-tech/OpenSora-STDiT-v3 unchanged: config.json's field names and the state-dict
keys are those of the original `STDiT3` (hpcaitech/Open-Sora v1.2.0, opensora/models/stdit/stdit3.py).

Token layout (C = width, T = latent frames, S = patches per frame, L = text tokens):
  every block sees x as (B, T, S, C)
  spatial blocks:  self-attention within a frame          (B*T, S, C)
  temporal blocks: self-attention across frames, with RoPE (B*S, T, C)
  both:            cross-attention of all T*S tokens of a sample to its text (B, T*S, C) x (B, L, C)

Timestep conditioning (adaLN-single, PixArt style): t = t_embedder(t) + fps_embedder(fps), one
t_block MLP gives (B, 6C) shared by all blocks; each block adds its own scale_shift_table.
The original STDiT3 also receives height, width, aspect ratio and frame count: only height and
width are used, through the scale of the 2D position table; the rest is ignored, as here.

Sequence parallelism (DSP): the frames are sharded over the sp group, (B, T/sp, S, C), zero-padded
when T does not divide. Spatial attention, cross-attention and the MLP are per frame or per token;
only temporal attention needs every frame, so it alone switches the sharded dim to S with an
all-to-all (the padded frames are cut there, so nothing attends to them; RoPE runs on the full frame
axis) and back. The frames are gathered before the final layer.

Caches (videosys/cache/hooks.py): the block-stack hook point is in `forward` (TeaCache acts there);
the module hook points are each block's self-attention ("spatial" / "temporal"), cross-attention
("cross") and MLP ("mlp"), where PAB acts.
"""

import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.cache.hooks import ModuleHooks
from videosys.core import comm
from videosys.core.parallel import ParallelState
from videosys.models.modules.adaln import modulate, modulation
from videosys.models.modules.attention import Mlp
from videosys.models.modules.embeddings import TimestepEmbedder, constant_table, sincos_grid
from videosys.models.modules.pretrained import PretrainedModel
from videosys.models.modules.text_memo import TextMemo, TextMemoMixin
from videosys.models.modules.rope import apply_rope

IMAGE_FPS = 120  # the fps the original conditions single images on (opensora/datasets IMG_FPS)
VIDEO_FPS = 24  # the release's sampling fps


@dataclass
class STDiT3Config:
    """config.json of hpcai-tech/OpenSora-STDiT-v3; defaults are STDiT3-XL/2's."""

    architectures: list = field(default_factory=lambda: ["STDiT3"])
    model_type: str = "STDiT3"
    input_size: list = field(default_factory=lambda: [None, None, None])
    input_sq_size: int = 512  # the square resolution the 2D position table is scaled against
    in_channels: int = 4
    patch_size: list = field(default_factory=lambda: [1, 2, 2])
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    pred_sigma: bool = True  # doubles the output channels (velocity and an unused sigma half)
    drop_path: float = 0.0
    caption_channels: int = 4096
    model_max_length: int = 300
    qk_norm: bool = True
    # runtime switches of the original (flash-attn, apex layernorm, its own SP); we always use SDPA
    enable_flash_attn: bool = False
    enable_layernorm_kernel: bool = False
    enable_sequence_parallelism: bool = False
    # training switches; they do not change inference
    only_train_temporal: bool = False
    freeze_y_embedder: bool = False
    skip_y_embedder: bool = False

    def __post_init__(self):
        self.patch_size = list(self.patch_size)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("RoPE needs an even head dim")
        if self.skip_y_embedder:
            raise ValueError("skip_y_embedder=True (pre-embedded captions) is not supported")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels


def masked_modulation(table: torch.Tensor, emb: torch.Tensor, emb0: torch.Tensor | None,
                      x_mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """adaLN-single on (B, T, S, C) tokens, each (B, 1, 1, C); with x_mask (B, T), frames where it is False
    (conditioning frames) take the t=0 embedding's instead, each (B, T, 1, C)."""
    mod = modulation(table, emb, token_dims=2)
    if x_mask is None:
        return mod
    keep = x_mask[:, :, None, None]  # (B, T, 1, 1)
    return tuple(torch.where(keep, m, m0) for m, m0 in zip(mod, modulation(table, emb0, token_dims=2)))


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in fp32 (LlamaRMSNorm; key `weight`)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


@constant_table
def stdit_pos_table(dim: int, h: int, w: int, scale: float, base_size: int, device: str) -> torch.Tensor:
    rows = torch.arange(h, dtype=torch.float32) / scale * (base_size / h)
    cols = torch.arange(w, dtype=torch.float32) / scale * (base_size / w)
    return sincos_grid(dim, rows, cols).to(device)


class RotaryEmbedding(nn.Module):
    """RoPE frequencies as rotary_embedding_torch keeps them: `freqs` is a (head_dim / 2,) parameter (the
    checkpoint's key); tables in the interleaved-pair layout of modules/rope.py, applied by its apply_rope.

    The tables are built as the release builds them (rotary_embedding_torch 0.5.3, its pinned
    version): positions arange(T) in the queries' dtype, times `freqs` in the parameter's dtype
    (the model's), the product and its cos / sin each rounded to that dtype. In fp32 this is the
    exact maths; in bf16 the angles carry bf16 rounding, as the release's did.
    The cos / sin tables depend only on the sequence length, so they are cached; loading a state
    dict clears the cache.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
        self.freqs = nn.Parameter(freqs, requires_grad=False)
        self._cache: dict = {}

    def tables(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # inside compile=True's whole forward: T x d values, built in the graph
            return self.build(length, device, dtype)  # (a lookup traced there would compile again at call 2)
        key = (length, str(device), dtype)
        if key not in self._cache:
            self._cache = {key: self.build(length, device, dtype)}
        return self._cache[key]

    def build(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(length, device=device, dtype=dtype)
        angles = torch.outer(pos, self.freqs.to(device=device, dtype=dtype))  # (N, d/2), rounded to dtype
        angles = angles.repeat_interleave(2, dim=-1)  # (N, d): one angle per interleaved pair
        return angles.cos(), angles.sin()

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache = {}
        super()._load_from_state_dict(*args, **kwargs)


class SelfAttention(nn.Module):
    """qkv / q_norm / k_norm / proj; optional RoPE after the qk norm (the original's order)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """q_linear / kv_linear / proj. Each sample's queries attend to that sample's valid text tokens.

    The original packs all valid tokens of the batch into one sequence with a block-diagonal
    mask (xformers); a per-sample key mask under SDPA is the same computation.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.kv_memo = TextMemo()

    def context_kv(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the text y (B, L, C), each (B, heads, L, d): once per text tensor (text_memo.py)."""
        b = y.shape[0]
        return self.kv_memo(y, lambda y: self.kv_linear(y).view(b, -1, 2, self.num_heads, self.head_dim)
                            .permute(2, 0, 3, 1, 4).unbind(0))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, N, C), y (B, L, C), mask (B, L) bool (True = attend) or None; `kv`: context_kv(y) if given."""
        b, n, c = x.shape
        q = self.q_linear(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.context_kv(y) if kv is None else kv
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class STDiT3Block(nn.Module):
    """Self-attention (spatial or temporal), cross-attention to text, MLP; adaLN-single modulation.

    `index` (the block's depth) and the kind ("spatial" / "temporal") name the block at the module hook points.
    compile=True (models/modules/compile.py) compiles `residual_stream` whole when no module hook is active,
    else the branch methods (`compiled_methods`) with the cache hooks eager around them.
    """

    compiled_block = "residual_stream"
    compiled_methods = ("attn_branch", "cross_branch", "mlp_branch")

    def __init__(self, cfg: STDiT3Config, temporal: bool, index: int = 0):
        super().__init__()
        dim = cfg.hidden_size
        self.temporal = temporal
        self.kind, self.index = ("temporal" if temporal else "spatial"), index
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm)
        self.cross_attn = CrossAttention(dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def modulation(self, t_mlp: torch.Tensor, t0_mlp: torch.Tensor | None = None,
                   x_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """(B, 6C) -> shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each (B, T or 1, 1, C).

        With x_mask (B, T), frames where it is False (conditioning frames) take the t=0 modulation.
        """
        return masked_modulation(self.scale_shift_table, t_mlp, t0_mlp, x_mask)

    def modulated_input(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """t2i_modulate(norm1(x), shift_msa, scale_msa): the self-attention input (TeaCache's indicator)."""
        return modulate(self.norm1(x), mod[0], mod[1])

    def self_attention(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, num_frames: int,
                       sp_group=None) -> torch.Tensor:
        """(B, T_local, S, C) -> (B, T_local, S, C): within frames (spatial) or across them (temporal)."""
        b, t, s, c = h.shape
        if not self.temporal:
            return self.attn(h.reshape(b * t, s, c)).view(b, t, s, c)  # (B*T, S, C)
        # DSP: every frame of a slice of the patches; the padded frames are cut off here
        h = comm.all_to_all(h, sp_group, scatter_dim=2, gather_dim=1, gather_size=num_frames)  # (B, T, S/sp, C)
        sp = h.shape[2]
        out = self.attn(h.transpose(1, 2).reshape(b * sp, num_frames, c), rope)  # (B * S/sp, T, C)
        out = out.view(b, sp, num_frames, c).transpose(1, 2)
        return comm.all_to_all(out, sp_group, scatter_dim=1, gather_dim=2, gather_size=s)  # (B, T/sp, S, C)

    def forward(self, x: torch.Tensor, y: torch.Tensor, t_mlp: torch.Tensor, y_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, t0_mlp: torch.Tensor | None = None,
                x_mask: torch.Tensor | None = None, hooks: ModuleHooks | None = None, num_frames: int | None = None,
                sp_group=None) -> torch.Tensor:
        """x (B, T_local, S, C); x_mask (B, T_local) for this rank's frames; num_frames = T over all ranks."""
        kv = self.cross_attn.context_kv(y)  # once per text (text_memo.py), eagerly, outside any compiled region
        return self.residual_stream(x, kv, t_mlp, y_mask, rope, t0_mlp, x_mask, num_frames, sp_group, hooks=hooks)

    def residual_stream(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], t_mlp: torch.Tensor,
                        y_mask: torch.Tensor | None, rope, t0_mlp: torch.Tensor | None, x_mask: torch.Tensor | None,
                        num_frames: int | None, sp_group=None, hooks: ModuleHooks | None = None) -> torch.Tensor:
        """The block on the text's keys and values (`compiled_block`: compiled whole when hooks is None)."""
        t = x.shape[1]
        mod = self.modulation(t_mlp, t0_mlp, x_mask)
        # cache hook points on the gated outputs (what the published Open-Sora PAB broadcasts); an attention
        # a cache reuses also skips its all-to-alls under DSP
        x = x + module_call(hooks, self.kind, self.index,
                            lambda: self.attn_branch(x, mod, rope, num_frames or t, sp_group))
        # spatial block i and temporal block i both cross-attend: `block` keeps their outputs apart
        x = x + module_call(hooks, "cross", self.index, lambda: self.cross_branch(x, kv, y_mask), block=self.kind)
        return x + module_call(hooks, "mlp", self.index, lambda: self.mlp_branch(x, mod), block=self.kind)

    def attn_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...], rope, num_frames: int,
                    sp_group=None) -> torch.Tensor:
        return mod[2] * self.self_attention(self.modulated_input(x, mod), rope, num_frames, sp_group)

    def cross_branch(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                     y_mask: torch.Tensor | None) -> torch.Tensor:
        """Every frame attends to the same text: frames fold into the query length, (B, T * S, C)."""
        b, t, s, c = x.shape
        return self.cross_attn(x.reshape(b, t * s, c), None, y_mask, kv=kv).view(b, t, s, c)

    def mlp_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return mod[5] * self.mlp(modulate(self.norm2(x), mod[3], mod[4]))


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size, in_channels: int, dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W), zero-padded at the end to the patch -> (B, T', S, dim)."""
        pads = [(-n) % p for n, p in zip(x.shape[2:], self.patch_size)]
        if any(pads):
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        x = self.proj(x)  # (B, dim, T', H', W')
        return x.flatten(3).permute(0, 2, 3, 1)


class CaptionEmbedder(nn.Module):
    """T5 states -> width (y_proj), and the learned null caption `y_embedding` used for CFG."""

    def __init__(self, in_channels: int, dim: int, token_num: int):
        super().__init__()
        self.y_proj = Mlp(in_channels, dim, dim)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.y_proj(y)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, num_patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, t0: torch.Tensor | None = None,
                x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, S, C), t (B, C) the timestep + fps embedding (before t_block); x_mask (B, T)."""
        shift, scale = modulation(self.scale_shift_table, t, token_dims=2)  # (B, 1, 1, C) each
        x = modulate(self.norm_final(x), shift, scale)
        if x_mask is not None:
            # The release's order (T2IFinalLayer, opensora/models/layers/blocks.py at v1.2.0; VideoSys
            # keeps it): the t0 branch normalises the *already t-modulated* x again, so conditioning
            # frames get norm_final, the t modulation, norm_final and the t0 modulation. The checkpoint
            # was trained with this, so we keep it rather than one norm with per-frame shift / scale.
            shift0, scale0 = modulation(self.scale_shift_table, t0, token_dims=2)
            x0 = modulate(self.norm_final(x), shift0, scale0)
            x = torch.where(x_mask[:, :, None, None], x, x0)
        return self.linear(x)


class STDiT3(PretrainedModel, TextMemoMixin, CacheMixin):
    config_class = STDiT3Config
    class_name = "STDiT3"
    weights_name = "model.safetensors"  # what hpcai-tech/OpenSora-STDiT-v3 ships
    compiled_forward = "forward"  # compile=True with no stack or module-hook cache: one graph (compile.py)

    def __init__(self, config: STDiT3Config):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.out_channels = config.out_channels
        self.rope = RotaryEmbedding(dim // config.num_heads)
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.fps_embedder = TimestepEmbedder(dim)  # the original's SizeEmbedder: same layers, fps as input
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.y_embedder = CaptionEmbedder(config.caption_channels, dim, config.model_max_length)
        self.spatial_blocks = nn.ModuleList(STDiT3Block(config, temporal=False, index=i) for i in range(config.depth))
        self.temporal_blocks = nn.ModuleList(STDiT3Block(config, temporal=True, index=i) for i in range(config.depth))
        self.final_layer = FinalLayer(dim, math.prod(config.patch_size), self.out_channels)
        self.parallel = ParallelState()
        self.text_memo = TextMemo()

    def set_parallel(self, state: ParallelState) -> None:
        self.parallel = state

    def pos_embed(self, h: int, w: int, scale: float, base_size: int, device: torch.device) -> torch.Tensor:
        """(h * w, C) 2D sin-cos table, row-major; first half encodes the column, second the row.

        Positions are stretched so a grid spans `base_size` cells and divided by `scale`
        (resolution / input_sq_size), as the original's PositionEmbedding2D. Fixed per generation: built once
        (constant_table).
        """
        return stdit_pos_table(self.config.hidden_size, h, w, float(scale), base_size, str(device))

    def embed_timestep(self, timestep: torch.Tensor, fps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t_embedder(t) + fps_embedder(fps): (B, C), the input of t_block and of the final layer."""
        return self.t_embedder(timestep, dtype) + self.fps_embedder(fps, dtype)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
                x_mask: torch.Tensor | None = None, fps=None, height=None, width=None, **kwargs) -> torch.Tensor:
        """Velocity prediction.

        x (B, C_in, T, H, W) latents; timestep (B,) or scalar in [0, 1000]; y (B, L, C_text) or
        (B, 1, L, C_text) T5 states; mask (B, L) text mask (1 = token); x_mask (B, T) bool, False on
        conditioning frames; fps (B,) or a number; height, width: the video's size in pixels (pass
        numbers: a device tensor costs a host sync, as the original's .item()). Returns (B, C_out, T, H, W)
        in fp32.
        """
        dtype = self.x_embedder.proj.weight.dtype
        b, _, frames, lat_h, lat_w = x.shape
        pt, ph, pw = self.config.patch_size
        t_, h_, w_ = -(-frames // pt), -(-lat_h // ph), -(-lat_w // pw)
        height = height if height is not None else lat_h * 8
        width = width if width is not None else lat_w * 8
        resolution = math.sqrt(float(height[0] if torch.is_tensor(height) else height)
                               * float(width[0] if torch.is_tensor(width) else width))
        if fps is None:
            fps = IMAGE_FPS if frames == 1 else VIDEO_FPS
        fps = torch.as_tensor(fps, device=x.device)
        # the original casts t and fps to the model dtype before embedding them: in bf16 that rounds
        # t (992.9 -> 992.0); do the same so bf16 runs condition on the values the release saw
        timestep = torch.as_tensor(timestep, device=x.device).to(dtype).float().reshape(-1).expand(b)
        fps = fps.to(dtype).float().reshape(-1).expand(b)

        # timestep and fps conditioning
        t = self.embed_timestep(timestep, fps, dtype)  # (B, C)
        t_mlp = self.t_block(t)  # (B, 6C)
        t0 = t0_mlp = None
        if x_mask is not None:
            x_mask = x_mask.bool()
            t0 = self.embed_timestep(torch.zeros_like(timestep), fps, dtype)
            t0_mlp = self.t_block(t0)

        # text
        y = y.to(dtype)
        if y.dim() == 4:
            y = y.squeeze(1)
        y = self.text_memo(y, self.y_embedder)  # (B, L, C): once per generation
        y_mask = None
        if mask is not None:
            y_mask = mask.bool()
            if y_mask.shape[0] != b:  # one mask for every CFG branch, as the original repeats it
                y_mask = y_mask.repeat(b // y_mask.shape[0], 1)

        # patches + 2D positions (cached), RoPE tables for the temporal blocks (cached)
        x = self.x_embedder(x.to(dtype))  # (B, T, S, C)
        scale = resolution / self.config.input_sq_size
        x = x + self.pos_embed(h_, w_, scale, round((h_ * w_) ** 0.5), x.device).to(dtype)
        rope = self.rope.tables(t_, x.device, dtype)  # the full frame axis: temporal attention sees every frame

        # DSP: this rank's frames (B, T_local, S, C), zero-padded when T does not divide by sp
        sp_group = self.parallel.sp_group
        x = comm.split(x, 1, sp_group)
        x_mask_local = None if x_mask is None else comm.split(x_mask, 1, sp_group)
        blocks = partial(self.run_blocks, y=y, t_mlp=t_mlp, y_mask=y_mask, rope=rope, t0_mlp=t0_mlp,
                         x_mask=x_mask_local, num_frames=t_)

        # the block-stack hook point: a cache may skip, cut short or reuse the stack
        x = self.cache_stack(blocks, x, indicator=lambda: self.cache_indicator(x, t_mlp, t_, t0_mlp, x_mask_local),
                             num_units=self.config.depth)

        x = comm.gather(x, 1, sp_group, size=t_)  # (B, T, S, C)
        x = self.final_layer(x, t, t0, x_mask)  # (B, T, S, pt*ph*pw*C_out)
        x = x.view(b, t_, h_, w_, pt, ph, pw, self.out_channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
        x = x.reshape(b, self.out_channels, t_ * pt, h_ * ph, w_ * pw)
        return x[:, :, :frames, :lat_h, :lat_w].float()

    def cache_indicator(self, x: torch.Tensor, t_mlp: torch.Tensor, num_frames: int, t0_mlp: torch.Tensor | None = None,
                        x_mask: torch.Tensor | None = None) -> torch.Tensor:
        """TeaCache's indicator: the first spatial block's modulated input (t2i_modulate(norm1(x)) with its
        shift / scale, x = patches + positions, as published), this rank's real frames only. With x_mask each
        frame is modulated by the timestep the blocks use for it (t = 0 on conditioning frames), which the
        published indicator (text-to-video only) never needed; without x_mask it is the published one."""
        start, stop = comm.shard_range(num_frames, self.parallel.sp_size, self.parallel.sp_rank)
        real = stop - start
        x_mask = None if x_mask is None else x_mask[:, :real]
        first = self.spatial_blocks[0]
        return first.modulated_input(x[:, :real], first.modulation(t_mlp, t0_mlp, x_mask))

    def run_blocks(self, x: torch.Tensor, y: torch.Tensor, t_mlp: torch.Tensor, y_mask: torch.Tensor | None,
                   rope: tuple[torch.Tensor, torch.Tensor], t0_mlp: torch.Tensor | None = None,
                   x_mask: torch.Tensor | None = None, num_frames: int | None = None, start: int = 0,
                   stop: int | None = None) -> torch.Tensor:
        """Units start .. stop-1 of the block stack (a unit: spatial block i, then temporal block i) on
        (B, T_local, S, C) tokens; x_mask (B, T_local) is this rank's part."""
        sp_group = self.parallel.sp_group
        hooks = self.module_hooks()
        for i in range(start, self.config.depth if stop is None else stop):
            x = self.spatial_blocks[i](x, y, t_mlp, y_mask, None, t0_mlp, x_mask, hooks=hooks, num_frames=num_frames,
                                       sp_group=sp_group)
            x = self.temporal_blocks[i](x, y, t_mlp, y_mask, rope, t0_mlp, x_mask, hooks=hooks,
                                        num_frames=num_frames, sp_group=sp_group)
        return x
