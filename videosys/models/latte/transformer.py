"""Latte (arXiv 2401.03048): alternating spatial and temporal transformer blocks.

Loads the `transformer/` folder of maxin-cn/Latte-1 unchanged: the config fields and
state-dict keys are those of diffusers' LatteTransformer3DModel.

Token layouts (C = model width, L = tokens per frame, F = frames, S = text tokens):
  spatial blocks see   (B, F, L, C): self-attention within a frame, cross-attention to text
  temporal blocks see  (B, L, F, C): self-attention across frames at one position
"""

from dataclasses import dataclass

import torch
from torch import nn

from videosys.cache import CacheMixin
from videosys.cache import pab as pab_lib
from videosys.models.modules.attention import Attention, FeedForward
from videosys.models.modules.embeddings import AdaLNSingle, CaptionProjection, PatchEmbed2D, sincos_1d
from videosys.models.modules.pretrained import PretrainedModel


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

    def __post_init__(self):
        if self.norm_type != "ada_norm_single":
            raise ValueError(f"Latte uses norm_type='ada_norm_single', got {self.norm_type!r}")
        if self.activation_fn not in ("gelu-approximate", "gelu"):
            raise ValueError(f"unsupported activation_fn {self.activation_fn!r} (Latte uses 'gelu-approximate')")


class LatteBlock(nn.Module):
    """adaLN-single transformer block: self-attention, optional text cross-attention, MLP.

    `kind` ("spatial" / "temporal") and `index` name the block for PAB's broadcast decisions.
    """

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
        b = t_mod.shape[0]
        return (self.scale_shift_table[None] + t_mod.view(b, 6, -1))[:, :, None, None].unbind(1)

    def modulated_input(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """norm1(x) * (1 + scale_msa) + shift_msa: the self-attention input (and TeaCache's indicator)."""
        return self.norm1(x) * (1 + mod[1]) + mod[0]

    def forward(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, pab: pab_lib.PAB | None = None) -> torch.Tensor:
        b, n, l, c = x.shape  # (B, N groups, L tokens per group, C)
        mod = self.modulation(t_mod)
        attn = pab_lib.run(pab, self.kind, self.index,
                           lambda: self.attn1(self.modulated_input(x, mod).reshape(b * n, l, c)).view(b, n, l, c))
        x = x + mod[2] * attn
        if self.attn2 is not None:
            # Every group of a sample attends to the same text: fold the groups into the query length
            # (B, N * L, C) so text keys are projected once per sample, not once per frame.
            cross = pab_lib.run(pab, "cross", self.index,
                                lambda: self.attn2(x.reshape(b, n * l, c), context, context_mask).view(b, n, l, c))
            x = x + cross
        mlp = pab_lib.run(pab, self.kind, self.index, lambda: self.ff(self.norm2(x) * (1 + mod[4]) + mod[3]), mlp=True)
        return x + mod[5] * mlp


class LatteTransformer3DModel(PretrainedModel, CacheMixin):
    config_class = LatteTransformerConfig
    class_name = "LatteTransformer3DModel"

    def __init__(self, config: LatteTransformerConfig):
        super().__init__()
        self.config = config
        dim = config.num_attention_heads * config.attention_head_dim
        self.out_channels = config.out_channels or config.in_channels
        p = config.patch_size
        self.pos_embed = PatchEmbed2D(p, config.in_channels, dim, base_size=config.sample_size // p,
                                      interpolation_scale=max(config.sample_size // 64, 1))
        self.transformer_blocks = nn.ModuleList(LatteBlock(config, "spatial", i) for i in range(config.num_layers))
        self.temporal_transformer_blocks = nn.ModuleList(
            LatteBlock(config, "temporal", i) for i in range(config.num_layers))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, p * p * self.out_channels)
        self.adaln_single = AdaLNSingle(dim)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)
        self._temp_pos_cache: dict = {}

    def temporal_pos_embed(self, num_frames: int, device: torch.device) -> torch.Tensor:
        """(F, C) sin-cos frame embedding, fixed per generation, so cached."""
        key = (num_frames, str(device))
        if key not in self._temp_pos_cache:
            dim = self.scale_shift_table.shape[1]
            self._temp_pos_cache[key] = sincos_1d(dim, torch.arange(num_frames)).float().to(device)
        return self._temp_pos_cache[key]

    def run_blocks(self, x: torch.Tensor, t_mod: torch.Tensor, context: torch.Tensor,
                   context_mask: torch.Tensor | None, temporal_attention: bool = True) -> torch.Tensor:
        """The block stack on (B, F, L, C) tokens."""
        f = x.shape[1]
        for i, (spatial, temporal) in enumerate(zip(self.transformer_blocks, self.temporal_transformer_blocks)):
            x = spatial(x, t_mod, context, context_mask, pab=self.pab)
            if temporal_attention:
                x = x.transpose(1, 2)  # (B, L, F, C)
                if i == 0 and f > 1:
                    x = x + self.temporal_pos_embed(f, x.device).to(x.dtype)
                x = temporal(x, t_mod, pab=self.pab).transpose(1, 2)  # back to (B, F, L, C)
        return x

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None,
                enable_temporal_attentions: bool = True) -> torch.Tensor:
        """(B, C_in, F, H, W) latents, (B,) timesteps, (B, S, C_text) text -> (B, C_out, F, H, W)."""
        b, c, f, height, width = hidden_states.shape
        p = self.config.patch_size
        h, w = height // p, width // p
        x = self.pos_embed(hidden_states.permute(0, 2, 1, 3, 4).reshape(b * f, c, height, width))
        x = x.view(b, f, h * w, -1)  # (B, F, L, C)
        t_mod, t_emb = self.adaln_single(timestep.expand(b), x.dtype)
        context = self.caption_projection(encoder_hidden_states)  # (B, S, C)

        # TeaCache: the indicator is the first spatial block's modulated input; when it has
        # changed little since the last computed step, skip every block and reuse their residual.
        teacache = self.teacache
        if teacache is not None:
            first = self.transformer_blocks[0]
            if teacache.skip(first.modulated_input(x, first.modulation(t_mod))):
                x = teacache.apply_cached(x)
            else:
                x_in = x
                x = self.run_blocks(x, t_mod, context, encoder_attention_mask, enable_temporal_attentions)
                teacache.store(x_in, x)
        else:
            x = self.run_blocks(x, t_mod, context, encoder_attention_mask, enable_temporal_attentions)

        shift, scale = (self.scale_shift_table[None] + t_emb[:, None])[:, :, None, None].unbind(1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)  # (B, F, L, p*p*C_out)
        x = x.view(b, f, h, w, p, p, self.out_channels).permute(0, 6, 1, 2, 4, 3, 5)
        return x.reshape(b, self.out_channels, f, h * p, w * p)
