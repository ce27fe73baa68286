"""Latte (arXiv 2401.03048): alternating spatial and temporal transformer blocks.

Loads the `transformer/` folder of maxin-cn/Latte-1 unchanged: the config fields and
state-dict keys are those of diffusers' LatteTransformer3DModel.

Tokens are kept as (B, F, L, C) (C = model width, L = tokens per frame, F = frames):
spatial blocks attend within a frame (and cross-attend to the text), temporal blocks across
frames at one position. With sequence parallelism (DSP) the frames are sharded over the sp
group, (B, F/sp, L, C); only temporal attention needs every frame, so it alone switches the
sharded dim to L with an all-to-all and back. Everything else is per frame or per token.

Skip-DiT (arXiv 2411.17616, `skip_connections=True`): long skip branches join unit i (spatial block i,
then temporal block i) to unit L-1-i. Before each deep unit i >= L - L//2 its input is replaced by
Linear(LayerNorm_fp32(cat[h, out_{L-1-i}])), out_j being unit j's output; the layout and key names
(skip_norms.j, skip_linears.j.linear) of the authors' LatteT2V_skip, so Latte-skip.pt loads as is.
"""

import dataclasses
import os
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.cache.hooks import ModuleHooks
from videosys.core import comm
from videosys.core.parallel import ParallelState
from videosys.models.modules.adaln import modulate, modulation
from videosys.models.modules.attention import Attention, FeedForward
from videosys.models.modules.embeddings import (AdaLNSingle, CaptionProjection, PatchEmbed2D, constant_table,
                                               sincos_1d)
from videosys.models.modules.pretrained import PretrainedModel
from videosys.models.modules.text_memo import TextMemo, TextMemoMixin


@dataclass
class LatteTransformerConfig:
    """diffusers' LatteTransformer3DModel config fields; defaults are Latte-1's values."""

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = 8  # learned sigma: epsilon and variance channels
    num_layers: int = 28
    dropout: float = 0.0
    cross_attention_dim: int | None = 1152
    attention_bias: bool = True
    sample_size: int = 64
    patch_size: int = 2
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: int | None = 1000
    norm_type: str = "ada_norm_single"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    caption_channels: int = 4096
    video_length: int = 16
    skip_connections: bool = False  # Skip-DiT's long skip branches (not a diffusers field)

    def __post_init__(self):
        if self.norm_type != "ada_norm_single":
            raise ValueError(f"Latte uses norm_type='ada_norm_single', got {self.norm_type!r}")
        if self.activation_fn not in ("gelu-approximate", "gelu"):
            raise ValueError(f"unsupported activation_fn {self.activation_fn!r} (Latte uses 'gelu-approximate')")

    def diffusers_kwargs(self) -> dict:
        """The fields diffusers' LatteTransformer3DModel takes (it has no skip branches)."""
        if self.skip_connections:
            raise ValueError("diffusers' LatteTransformer3DModel has no Skip-DiT skip branches")
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "skip_connections"}

    @property
    def first_skip_unit(self) -> int:
        """The first deep unit with a skip branch: units below L//2 feed units from L - L//2 on (an odd
        depth's middle unit has none), as the authors' `i >= 14` / `i < 14` for L = 28."""
        return self.num_layers - self.num_layers // 2

    @property
    def base_sample_size(self) -> int:
        """The latent height the model was trained at: the 2D position grid spans it whatever the real size."""
        return self.sample_size

    @property
    def temporal_interpolation_scale(self) -> float:
        """Frame positions are divided by this before the temporal sin-cos embedding (1 for Latte-1)."""
        return 1.0


class LatteBlock(nn.Module):
    """adaLN-single transformer block: self-attention, optional text cross-attention, MLP.

    `kind` ("spatial" / "temporal") and `index` name the block at the caches' module hook points.
    compile=True (models/modules/compile.py) compiles `residual_stream` whole when no module hook is active,
    else the branch methods (`compiled_methods`) with the cache hooks eager around them.
    """

    compiled_block = "residual_stream"
    compiled_methods = ("attn_branch", "cross_branch", "mlp_branch")

    def __init__(self, cfg: LatteTransformerConfig, kind: str, index: int):
        super().__init__()
        self.kind, self.index = kind, index
        cross_attention = kind == "spatial"
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        norm = dict(eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine)
        self.norm1 = nn.LayerNorm(dim, **norm)
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.attention_head_dim, bias=cfg.attention_bias)
        self.attn2 = None
        if cross_attention:
            self.attn2 = Attention(dim, cfg.num_attention_heads, cfg.attention_head_dim, bias=cfg.attention_bias,
                                   cross_attention_dim=cfg.cross_attention_dim)
        self.norm2 = nn.LayerNorm(dim, **norm)
        approximate = "tanh" if cfg.activation_fn == "gelu-approximate" else "none"
        self.ff = FeedForward(dim, approximate=approximate)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def modulation(self, t_mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 6C) -> shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, each (B, 1, 1, C)."""
        return modulation(self.scale_shift_table, t_mod, token_dims=2)

    def modulated_input(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """norm1(x) * (1 + scale_msa) + shift_msa: the self-attention input (and TeaCache's indicator)."""
        return modulate(self.norm1(x), mod[0], mod[1])

    def self_attention(self, h: torch.Tensor, num_frames: int, sp_group=None) -> torch.Tensor:
        """(B, F_local, L, C) -> (B, F_local, L, C): within frames (spatial) or across them (temporal)."""
        b, f, l, c = h.shape
        if self.kind == "spatial":
            return self.attn1(h.reshape(b * f, l, c)).view(b, f, l, c)
        h = comm.all_to_all(h, sp_group, scatter_dim=2, gather_dim=1, gather_size=num_frames)  # (B, F, L/sp, C)
        lp = h.shape[2]
        out = self.attn1(h.transpose(1, 2).reshape(b * lp, num_frames, c))  # (B * L/sp, F, C)
        out = out.view(b, lp, num_frames, c).transpose(1, 2)
        return comm.all_to_all(out, sp_group, scatter_dim=1, gather_dim=2, gather_size=l)  # (B, F/sp, L, C)

    def attn_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...], num_frames: int,
                    sp_group=None) -> torch.Tensor:
        """gate_msa * self-attention(modulated x)."""
        return mod[2] * self.self_attention(self.modulated_input(x, mod), num_frames, sp_group)

    def cross_branch(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                     context_mask: torch.Tensor | None) -> torch.Tensor:
        """Cross-attention to the text's keys and values. Every frame of a sample attends to the same text:
        the frames fold into the query length, (B, F * L, C)."""
        b, f, l, c = x.shape
        return self.attn2(x.reshape(b, f * l, c), mask=context_mask, kv=kv).view(b, f, l, c)

    def mlp_branch(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return mod[5] * self.ff(modulate(self.norm2(x), mod[3], mod[4]))

    def forward(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, hooks: ModuleHooks | None = None,
                num_frames: int | None = None, sp_group=None) -> torch.Tensor:
        # the text's keys and values: once per text (text_memo.py), eagerly, outside any compiled region
        kv = None if self.attn2 is None else self.attn2.context_kv(context)
        return self.residual_stream(x, t_mod, kv, context_mask, num_frames, sp_group, hooks=hooks)

    def residual_stream(self, x: torch.Tensor, t_mod: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None,
                        context_mask: torch.Tensor | None, num_frames: int | None, sp_group=None,
                        hooks: ModuleHooks | None = None) -> torch.Tensor:
        """The block on (B, F_local, L, C) tokens (`compiled_block`: compiled whole when hooks is None)."""
        f = x.shape[1]
        mod = self.modulation(t_mod)
        # cache hook points, on the gated outputs (gate * attention, gate * MLP: what the PAB authors' Latte and
        # Open-Sora-Plan v1.1 code broadcasts); an attention a cache reuses skips its compute and, under DSP,
        # its all-to-alls
        x = x + module_call(hooks, self.kind, self.index, lambda: self.attn_branch(x, mod, num_frames or f, sp_group))
        if kv is not None:
            x = x + module_call(hooks, "cross", self.index, lambda: self.cross_branch(x, kv, context_mask),
                                block=self.kind)
        return x + module_call(hooks, "mlp", self.index, lambda: self.mlp_branch(x, mod), block=self.kind)


@constant_table
def temporal_pos_table(dim: int, num_frames: int, scale: float, sp_size: int, sp_rank: int,
                       device: str) -> torch.Tensor:
    positions = torch.arange(comm.padded_size(num_frames, sp_size)) / scale
    return sincos_1d(dim, positions).float().chunk(sp_size)[sp_rank][:, None].to(device)


def fp32_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """`norm` computed in fp32 whatever the model's dtype (the authors' FP32_Layernorm)."""
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)


class SkipLinear(nn.Module):
    """The Linear of one Skip-DiT branch, (B, ..., 2C) -> (B, ..., C); wrapped to keep the authors' key names
    (skip_linears.j.linear.*).

    Init: the authors' t2v training class (LatteT2V_skip) keeps nn.Linear's default init (its zero init is
    commented out; only the inference class, whose weights a checkpoint overwrites, zeroes it). The fused value
    *replaces* h, so zeros would feed the deep half zeros; we keep the default init and fine-tune the branches
    (scripts/train_demo.py --skip)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        return self.linear(cat)


def skip_dit_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The transformer weights of a Skip-DiT checkpoint: "ema", else "model", else the dict itself."""
    for key in ("ema", "model"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


class LatteTransformer3DModel(PretrainedModel, TextMemoMixin, CacheMixin):
    config_class = LatteTransformerConfig
    class_name = "LatteTransformer3DModel"
    compiled_forward = "forward"  # compile=True with no stack or module-hook cache: one graph (compile.py)
    # the authors' Skip-DiT training saves LatteT2V_skip's state_dict (diffusers 0.24), which holds the training's
    # null caption for class dropout (120 x caption_channels), a buffer inference never reads
    release_only = ("caption_projection.y_embedding",)

    def __init__(self, config: LatteTransformerConfig):
        super().__init__()
        self.config = config
        dim = config.num_attention_heads * config.attention_head_dim
        self.out_channels = config.out_channels or config.in_channels
        p = config.patch_size
        size = config.base_sample_size
        self.pos_embed = PatchEmbed2D(p, config.in_channels, dim, base_size=size // p,
                                      interpolation_scale=max(size // 64, 1))
        self.transformer_blocks = nn.ModuleList(LatteBlock(config, "spatial", i) for i in range(config.num_layers))
        self.temporal_transformer_blocks = nn.ModuleList(
            LatteBlock(config, "temporal", i) for i in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, p * p * self.out_channels)
        self.adaln_single = AdaLNSingle(dim)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)
        if config.skip_connections:  # one branch per deep unit, j = i - first_skip_unit
            self.skip_norms = nn.ModuleList(nn.LayerNorm(2 * dim, eps=1e-6) for _ in range(config.num_layers // 2))
            self.skip_linears = nn.ModuleList(SkipLinear(dim) for _ in range(config.num_layers // 2))
        self.text_memo = TextMemo()  # the caption projection, once per generation
        self.parallel = ParallelState()

    def set_parallel(self, state: ParallelState) -> None:
        self.parallel = state

    @classmethod
    def from_skip_dit(cls, checkpoint: str, config: LatteTransformerConfig | None = None,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        """A published Skip-DiT training checkpoint (Latte-skip.pt: torch.save({"ema": ..., "model": ...})).

        Its names are ours (diffusers' Latte keys plus skip_norms / skip_linears), so this only unwraps: the
        "ema" weights when present, else "model", as the authors' sample_t2v.py. `config` defaults to Latte-1's
        with skip branches (the architecture the authors fine-tuned)."""
        config = config or LatteTransformerConfig(skip_connections=True)
        if not config.skip_connections:
            raise ValueError("from_skip_dit needs a config with skip_connections=True")
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"no Skip-DiT checkpoint at {checkpoint!r}")
        state = skip_dit_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return cls.from_state_dict(state, config, dtype, device, source=checkpoint)

    def temporal_pos_embed(self, num_frames: int, device: torch.device) -> torch.Tensor:
        """(F_local, 1, C) sin-cos embedding of this rank's frames; fixed per generation, so built once."""
        return temporal_pos_table(self.scale_shift_table.shape[1], num_frames, self.config.temporal_interpolation_scale,
                                  self.parallel.sp_size, self.parallel.sp_rank, str(device))

    def fuse_skip(self, i: int, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Deep unit i's input from h and unit L-1-i's output: Linear(LayerNorm_fp32(cat[h, skip]))."""
        j = i - self.config.first_skip_unit
        return self.skip_linears[j](fp32_layer_norm(self.skip_norms[j], torch.cat([h, skip], dim=-1)))

    def run_blocks(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor,
                   context_mask: torch.Tensor | None, num_frames: int, temporal_attention: bool = True,
                   start: int = 0, stop: int | None = None, skips: dict | None = None):
        """Units start .. stop-1 of the block stack (a unit: spatial block i, then temporal block i) on
        (B, F_local, L, C) tokens.

        With skip branches, `skips` (one dict per forward) holds the shallow units' outputs by index, so
        partial runs of one forward compose: run(0, k) then run(k) equals run(0, L), and a deep unit's
        given input is fused with the skip an earlier run of the same forward stored (Skip-Cache)."""
        sp_group = self.parallel.sp_group
        hooks = self.module_hooks()
        num_layers, first_skip = self.config.num_layers, self.config.first_skip_unit
        for i in range(start, num_layers if stop is None else stop):
            if skips is not None and i >= first_skip:
                partner = num_layers - 1 - i
                if partner not in skips:
                    raise RuntimeError(f"unit {i}'s skip branch needs unit {partner}'s output from this forward; "
                                       "run the shallow units first")
                x = self.fuse_skip(i, x, skips[partner])
            spatial, temporal = self.transformer_blocks[i], self.temporal_transformer_blocks[i]
            x = spatial(x, t_mod, context, context_mask, hooks=hooks)
            if temporal_attention:
                if i == 0 and num_frames > 1:
                    x = x + self.temporal_pos_embed(num_frames, x.device).to(x.dtype)
                x = temporal(x, t_mod, hooks=hooks, num_frames=num_frames, sp_group=sp_group)
            if skips is not None and i < num_layers // 2:
                skips[i] = x
        return x

    def cache_indicator(self, x: torch.Tensor, t_mod: torch.Tensor, num_frames: int) -> torch.Tensor:
        """TeaCache's indicator: the first spatial block's modulated input, this rank's real frames only."""
        start, stop = comm.shard_range(num_frames, self.parallel.sp_size, self.parallel.sp_rank)
        first = self.transformer_blocks[0]
        return first.modulated_input(x[:, : stop - start], first.modulation(t_mod))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None,
                enable_temporal_attentions: bool = True) -> torch.Tensor:
        """(B, C_in, F, H, W) latents, (B,) timesteps, (B, S, C_text) text -> (B, C_out, F, H, W)."""
        b, c, f, height, width = hidden_states.shape
        p = self.config.patch_size
        h, w = height // p, width // p
        x = self.pos_embed(hidden_states.permute(0, 2, 1, 3, 4).reshape(b * f, c, height, width))
        sp_group = self.parallel.sp_group
        x = comm.split(x.view(b, f, h * w, -1), 1, sp_group)  # (B, F_local, L, C)
        t_mod, t_emb = self.adaln_single(timestep.expand(b), x.dtype)
        context = self.text_memo(encoder_hidden_states, self.caption_projection)  # (B, S, C)
        blocks = partial(self.run_blocks, t_mod=t_mod, context=context, context_mask=encoder_attention_mask,
                         num_frames=f, temporal_attention=enable_temporal_attentions,
                         skips={} if self.config.skip_connections else None)

        # the block-stack hook point: a cache may skip, cut short or reuse the stack (TeaCache's indicator:
        # the first spatial block's modulated input)
        x = self.cache_stack(blocks, x, indicator=lambda: self.cache_indicator(x, t_mod, f),
                             num_units=self.config.num_layers)

        shift, scale = modulation(self.scale_shift_table, t_emb, token_dims=2)
        x = self.proj_out(modulate(self.norm_out(x), shift, scale))  # (B, F_local, L, p*p*C_out)
        x = comm.gather(x, 1, sp_group, size=f)  # (B, F, L, p*p*C_out)
        x = x.view(b, f, h, w, p, p, self.out_channels).permute(0, 6, 1, 2, 4, 3, 5)
        return x.reshape(b, self.out_channels, f, h * p, w * p)
