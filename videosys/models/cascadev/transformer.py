"""CascadeV's DiT: PixArt-Sigma without text, with 3D and grid attention (bytedance/CascadeV patch/PixArt.py).

It denoises a window of `lats_per_vid` SVD-VAE latent frames (4 channels), conditioned on the
upsampled semantic latent concatenated channel-wise (16 channels, so 20 in), and predicts
epsilon and the learned variance (8 out). Parameter names are the release's PixArt names
(x_embedder, t_embedder, t_block, blocks.i.attn.qkv, final_layer ...), so its
s1024.effn-f32.pth loads unchanged.

Tokens are (B, L, C) with L = T * h * w in (frame, row, column) order. Every block attends over
all L tokens (3D attention), except where `attn_strides[i]` = (ts, xs): there the tokens are cut
into ts x xs x xs groups of (T/ts) frames x (h/xs) rows x (w/xs) columns, contiguous blocks
exactly as the release reshapes them, and attention runs within each group. Only attention sees
the groups: the rest of a block is per token with one modulation per sample, so regrouping the
whole block, as the release does, gives the same result.

Positions: fixed sin-cos, [frame (C/3) | column (C/3) | row (C/3)]; the spatial grid positions
are divided by `pe_interpolation` (2 for the 1024px model), frames are not.

Caches (videosys/cache/hooks.py): the blocks (28 in the release) are one block stack (a unit = one block; TeaCache's
indicator is block 0's modulated input, as for every PixArt-style DiT here); each block's attention is a
module site of kind "full" (3D), "temporal" (grid groups keeping every frame: (1, xs), attention along time
within a patch) or "spatial" (grid groups cutting the frames: (ts, 1), (ts, xs), attention within a few
frames), its MLP an "mlp" site; a site's output is gated (gate * attention, gate * MLP), as in the other
adaLN-single families (Latte, Open-Sora). There is no cross-attention (no text) and no CFG.

Sequence parallel (Ulysses): the L tokens are sharded over the sp group; around attention an
all-to-all trades the token shard for a head shard, so each rank attends over all tokens (and
any grid grouping) for heads/sp heads. L and the heads must divide by sp.
"""

import glob
import os
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.core import comm
from videosys.core.parallel import ParallelState
from videosys.models.modules.attention import Mlp, sdpa
from videosys.models.modules.embeddings import TimestepEmbedder, constant_table, sincos_1d
from videosys.models.modules.pretrained import PretrainedModel
from videosys.utils.hub import read_state_dict

# configs/s1024.effn-f32.py: 28 layers, grid attention (1, 4) / (4, 1) alternating in layers 0-7 and 12-19
RELEASE_ATTN_STRIDES = [[1, 4], [4, 1], [1, 4], [4, 1], [1, 4], [4, 1], [1, 4], [4, 1], None, None, None, None,
                        [1, 4], [4, 1], [1, 4], [4, 1], [1, 4], [4, 1], [1, 4], [4, 1], None, None, None, None,
                        None, None, None, None]


@dataclass
class CascadeVTransformerConfig:
    """Defaults: the release's PixArt_XL_2 as recon/refine_latent.py builds it for s1024.effn-f32."""

    input_size: int = 128  # latent tile side the model runs on (1024 px / 8)
    patch_size: int = 2
    in_channels: int = 20  # 4 noisy SVD latents + 16 semantic-compressor channels
    out_channels: int = 8  # epsilon + learned variance (pred_sigma)
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    pe_interpolation: float = 2.0
    lats_per_vid: int = 8  # frames per window (num_frames_per_video with the temporal decoder)
    attn_strides: list | None = field(default_factory=lambda: [s and list(s) for s in RELEASE_ATTN_STRIDES])
    fp32_attention: bool = True  # the release config's fp32_attention: softmax in fp32 under fp16

    def __post_init__(self):
        t_dim = self.hidden_size // 3
        if t_dim % 2 or (self.hidden_size - t_dim) % 4:
            raise ValueError(f"hidden_size={self.hidden_size}: the position embedding splits it into a frame third "
                             "(even) and a spatial rest (divisible by 4)")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must divide by num_heads={self.num_heads}")
        if self.attn_strides is not None and not self.attn_strides:
            raise ValueError("attn_strides must be None or a non-empty list")

    def strides(self, index: int) -> tuple[int, int] | None:
        """(frame groups, spatial groups per side) of block `index`, or None for full 3D attention.
        The list repeats when shorter than the depth (the release indexes it modulo its length)."""
        if self.attn_strides is None:
            return None
        s = self.attn_strides[index % len(self.attn_strides)]
        return None if s is None else (int(s[0]), int(s[1]))


def to_groups(x: torch.Tensor, frames: int, height: int, width: int, ts: int, xs: int) -> torch.Tensor:
    """(B, T*h*w, ...) -> (B*ts*xs*xs, T/ts * h/xs * w/xs, ...): contiguous (frame, row, column) blocks."""
    b, rest = x.shape[0], x.shape[2:]
    gt, gh, gw = frames // ts, height // xs, width // xs
    x = x.reshape(b, ts, gt, xs, gh, xs, gw, *rest)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, *range(7, x.dim()))  # (B, ts, xs, xs, gt, gh, gw, ...)
    return x.reshape(b * ts * xs * xs, gt * gh * gw, *rest)


def from_groups(x: torch.Tensor, batch: int, frames: int, height: int, width: int, ts: int, xs: int) -> torch.Tensor:
    """The inverse of to_groups."""
    rest = x.shape[2:]
    gt, gh, gw = frames // ts, height // xs, width // xs
    x = x.reshape(batch, ts, xs, xs, gt, gh, gw, *rest)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, *range(7, x.dim()))  # (B, ts, gt, xs, gh, xs, gw, ...)
    return x.reshape(batch, frames * height * width, *rest)


def attention_kind(strides: tuple[int, int] | None) -> str:
    """The cache site kind of an attention with these grid strides: "full" (3D, or a 1 x 1 grid), "temporal"
    (groups keep every frame and cut space), "spatial" (groups cut the frames)."""
    if strides is None or strides == (1, 1):
        return "full"
    return "temporal" if strides[0] == 1 else "spatial"


class SelfAttention(nn.Module):
    """Fused qkv self-attention (PixArt's AttentionKVCompress without compression): keys qkv, proj."""

    def __init__(self, dim: int, heads: int, fp32: bool):
        super().__init__()
        self.heads, self.fp32 = heads, fp32
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, layout: tuple[int, int, int], strides: tuple[int, int] | None,
                num_tokens: int, sp_group=None) -> torch.Tensor:
        b, n, c = x.shape  # (B, L_local, C)
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads)
        # Ulysses: tokens gathered, heads scattered -> (B, L, 3, heads/sp, d)
        qkv = comm.all_to_all(qkv, sp_group, scatter_dim=3, gather_dim=1, gather_size=num_tokens)
        if strides is not None:
            qkv = to_groups(qkv, *layout, *strides)  # (B * groups, L / groups, 3, heads/sp, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B', heads/sp, L', d)
        out = sdpa(q.float(), k.float(), v.float()).to(x.dtype) if self.fp32 and x.dtype != torch.float32 \
            else sdpa(q, k, v)
        out = out.transpose(1, 2)  # (B', L', heads/sp, d)
        if strides is not None:
            out = from_groups(out, b, *layout, *strides)  # (B, L, heads/sp, d)
        out = comm.all_to_all(out, sp_group, scatter_dim=1, gather_dim=2)  # (B, L_local, heads, d)
        return self.proj(out.reshape(b, n, c))


class CascadeVBlock(nn.Module):
    """PixArt block (adaLN-single): modulated self-attention (3D or grid) and MLP, no cross-attention.

    compile=True (models/modules/compile.py) compiles `forward` whole when no module hook is active, else the
    branch methods (`compiled_methods`) with the cache hooks eager around them.
    """

    compiled_block = "forward"
    compiled_methods = ("attn_branch", "mlp_branch")

    def __init__(self, cfg: CascadeVTransformerConfig, index: int):
        super().__init__()
        dim = cfg.hidden_size
        self.index, self.strides = index, cfg.strides(index)
        self.kind = attention_kind(self.strides)  # its attention's cache site kind
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, cfg.num_heads, cfg.fp32_attention)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def modulation(self, t_mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each (B, 1, C)."""
        return (self.scale_shift_table[None] + t_mod.view(t_mod.shape[0], 6, -1)).chunk(6, dim=1)

    def modulated_input(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The attention's input: norm1(x) modulated (TeaCache's indicator on block 0)."""
        return self.norm1(x) * (1 + mod[1]) + mod[0]

    def forward(self, x: torch.Tensor, t_mod: torch.Tensor, layout: tuple[int, int, int], num_tokens: int,
                sp_group=None, hooks=None) -> torch.Tensor:
        mod = self.modulation(t_mod)
        # cache hook points on the gated outputs; an attention a cache reuses also skips its all-to-alls
        x = x + module_call(hooks, self.kind, self.index,
                            lambda: self.attn_branch(x, mod, layout, num_tokens, sp_group))
        return x + module_call(hooks, "mlp", self.index, lambda: self.mlp_branch(x, mod), block=self.kind)

    def attn_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...], layout: tuple[int, int, int],
                    num_tokens: int, sp_group=None) -> torch.Tensor:
        return mod[2] * self.attn(self.modulated_input(x, mod), layout, self.strides, num_tokens, sp_group)

    def mlp_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return mod[5] * self.mlp(self.norm2(x) * (1 + mod[4]) + mod[3])


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, c_in: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, dim, patch, patch)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, c_out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * c_out)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)  # (B, 1, C) each
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


def position_table(dim: int, frames: int, height: int, width: int, pe_interpolation: float) -> torch.Tensor:
    """(T*h*w, dim) fp32: [frame sin-cos (dim/3) | 2D sin-cos of the grid / pe_interpolation] (the release's
    get_pos_embed: get_1d_sincos over frame indices, PixArt's get_2d_sincos_pos_embed per frame)."""
    t_dim, half = dim // 3, (dim - dim // 3) // 2
    rows = torch.arange(height, dtype=torch.float32) / pe_interpolation
    cols = torch.arange(width, dtype=torch.float32) / pe_interpolation
    row, col = torch.meshgrid(rows, cols, indexing="ij")  # (h, w) each, row-major tokens
    space = torch.cat([sincos_1d(half, col), sincos_1d(half, row)], dim=1).float()  # (h*w, 2dim/3)
    time = sincos_1d(t_dim, torch.arange(frames, dtype=torch.float32)).float()  # (T, dim/3)
    table = torch.cat([time[:, None].expand(-1, height * width, -1), space[None].expand(frames, -1, -1)], dim=-1)
    return table.reshape(frames * height * width, dim)


@constant_table
def dit_pos_table(dim: int, frames: int, h: int, w: int, pe_interpolation: float, sp_size: int, sp_rank: int,
                  device: str) -> torch.Tensor:
    return comm.shard(position_table(dim, frames, h, w, pe_interpolation), 0, sp_size, sp_rank).to(device)


class CascadeVTransformer(PretrainedModel, CacheMixin):
    config_class = CascadeVTransformerConfig
    class_name = "CascadeVTransformer"
    compiled_forward = "forward"  # compile=True with no stack or module-hook cache: one graph (compile.py)
    guided = False  # one DiT call per step on the condition-concatenated input: no CFG branches

    def __init__(self, config: CascadeVTransformerConfig):
        super().__init__()
        self.config = config
        dim, p = config.hidden_size, config.patch_size
        self.x_embedder = PatchEmbed(p, config.in_channels, dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(CascadeVBlock(config, i) for i in range(config.depth))
        self.final_layer = FinalLayer(dim, p, config.out_channels)
        self.parallel = ParallelState()

    def set_parallel(self, state: ParallelState) -> None:
        self.parallel = state

    def check_input(self, frames: int, height: int, width: int) -> None:
        """Raise (before any compute) when a (T, H, W) latent window does not fit the patch, the grid
        groups or the sequence-parallel split."""
        cfg, p = self.config, self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"latent size {height}x{width} must divide by the patch size {p}")
        h, w = height // p, width // p
        for i in range(cfg.depth):
            s = cfg.strides(i)
            if s is not None and (frames % s[0] or h % s[1] or w % s[1]):
                raise ValueError(f"block {i}'s grid attention {list(s)} needs frames ({frames}) divisible by {s[0]} "
                                 f"and the token grid ({h}x{w}) by {s[1]}")
        sp = self.parallel.sp_size
        if sp > 1 and (cfg.num_heads % sp or (frames * h * w) % sp):
            raise ValueError(f"sequence parallelism (Ulysses) over {sp} ranks needs the heads ({cfg.num_heads}) and "
                             f"the tokens per window ({frames * h * w}) divisible by {sp}")

    def pos_embed(self, frames: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """This rank's (L_local, C) share of the position table; fixed per tile size, so built once
        (constant_table)."""
        return dit_pos_table(self.config.hidden_size, frames, h, w, float(self.config.pe_interpolation),
                             self.parallel.sp_size, self.parallel.sp_rank, str(device))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T, H, W) latents (noisy + condition), (B,) timesteps -> (B, C_out, T, H, W)."""
        b, c, f, height, width = x.shape
        p = self.config.patch_size
        h, w = height // p, width // p
        self.check_input(f, height, width)
        sp_group = self.parallel.sp_group
        tokens = self.x_embedder.proj(x.transpose(1, 2).reshape(b * f, c, height, width))  # (B*T, C, h, w)
        tokens = tokens.flatten(2).transpose(1, 2).reshape(b, f * h * w, -1)  # (B, L, C)
        tokens = comm.split(tokens, 1, sp_group)  # (B, L_local, C)
        tokens = tokens + self.pos_embed(f, h, w, x.device).to(tokens.dtype)
        t_emb = self.t_embedder(timestep.expand(b), tokens.dtype)  # (B, C)
        t_mod = self.t_block(t_emb)  # (B, 6C)
        blocks = partial(self.run_blocks, t_mod=t_mod, layout=(f, h, w))
        # the block-stack hook point (TeaCache's indicator: block 0's modulated input; L divides by sp, so this
        # rank's tokens are all real)
        first = self.blocks[0]
        tokens = self.cache_stack(blocks, tokens, num_units=len(self.blocks),
                                  indicator=lambda x=tokens: first.modulated_input(x, first.modulation(t_mod)))
        out = comm.gather(self.final_layer(tokens, t_emb), 1, sp_group)  # (B, L, p*p*C_out)
        c_out = self.config.out_channels
        out = out.view(b, f, h, w, p, p, c_out).permute(0, 6, 1, 2, 4, 3, 5)  # (B, C_out, T, h, p, w, p)
        return out.reshape(b, c_out, f, height, width)

    def run_blocks(self, x: torch.Tensor, t_mod: torch.Tensor, layout: tuple[int, int, int], start: int = 0,
                   stop: int | None = None) -> torch.Tensor:
        """Blocks start .. stop-1 on (B, L_local, C) tokens of a (T, h, w) token grid."""
        hooks, sp_group = self.module_hooks(), self.parallel.sp_group
        num_tokens = layout[0] * layout[1] * layout[2]
        for block in self.blocks[start:stop]:
            x = block(x, t_mod, layout, num_tokens, sp_group, hooks=hooks)
        return x

    @classmethod
    def read_checkpoint(cls, folder: str) -> dict[str, torch.Tensor]:
        """Our folders hold safetensors; a folder with the release's .pth is read as the release reads it."""
        if glob.glob(os.path.join(folder, "*.safetensors")):
            return read_state_dict(folder)
        return release_state_dict(folder)


RELEASE_CHECKPOINT = "s1024.effn-f32.pth"  # the file in ByteDance/CascadeV


def release_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The DiT weights of the release's .pth (a file, or a folder holding s1024.effn-f32.pth), as the
    release's load_checkpoint reads them: `state_dict`, without PixArt's stored `pos_embed` table."""
    file = os.path.join(path, RELEASE_CHECKPOINT) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no CascadeV checkpoint at {file!r}")
    try:  # tensors, numbers and containers only: a pickle that needs more is refused, not executed
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{file!r} is not a plain torch.save state dict ({type(err).__name__}: {err}); "
                         "save its 'state_dict' alone (or as safetensors) and load that") from err
    state = state.get("state_dict", state)
    return {k: v for k, v in state.items() if k not in ("pos_embed", "base_model.pos_embed", "model.pos_embed")}
