"""LaVie's 3D UNet: Stable Diffusion 1.4's UNet made 3D (the base stage; the interpolation stage is the same family).

What the release (Vchitect/LaVie base/models/: unet.py, unet_blocks.py, resnet.py, attention.py) does, in its key
names, on latents (B, C, F, H, W):

- every 2D layer of SD's UNet runs per frame: conv_in / conv_out, the ResNets' convolutions, Down- / Upsample2D,
  each level's attention ("Transformer3DModel": GroupNorm, proj_in, blocks, proj_out over one frame's tokens);
  diffusers' classes are reused for them (ResnetBlock2D's layers, Downsample2D, Upsample2D, Timesteps,
  TimestepEmbedding, the GEGLU FeedForward);
- except the GroupNorms of the ResNets and of conv_norm_out: they see the 5D tensor, so their statistics span
  the frames (resnet.py ResnetBlock3D applies nn.GroupNorm to (B, C, F, H, W));
- each transformer block adds a temporal self-attention between the cross-attention and the MLP
  (attention.py BasicTransformerBlock.attn_temp / norm_temp): every spatial position attends over the frames
  with rotary positions on the first 32 channels of each head (rotary_embedding_torch's interleaved pairs,
  `RotaryEmbedding(32)` in unet.py) and a learned T5-style relative position bias per head
  (`RelativePositionBias(heads, max_distance=32)`, 32 buckets).

Hook points (videosys/cache/hooks.py): each transformer block calls its spatial self-attention ("spatial"),
cross-attention ("cross"), temporal attention ("temporal") and MLP ("mlp") through `module_call`, block kind
"spatial", index = the block's order in the forward (down, mid, up). The UNet itself is the block stack: its
units are the down layers (a ResNet + attention pair, or a downsampler), each leaving a skip connection, the mid
block, then the up layers, each taking one skip back (the last of a level upsamples); `cache_stack` gets the
conv_in output as its stream and `down_units` so a method can run the shallow ends of the U alone (DeepCache,
videosys/cache/deepcache.py). TeaCache's indicator is the first ResNet's timestep-modulated input (see
`LaVieUNet3DModel.forward`).
"""

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.core.parallel import ParallelState
from videosys.models.modules.attention import Attention
from videosys.models.modules.pretrained import PretrainedModel
from videosys.models.modules.rope import apply_rope, rope_1d


@dataclass
class LaVieUNetConfig:
    """SD-1.4's unet/config.json (CompVis/stable-diffusion-v1-4), which the release's from_pretrained_2d reads, with
    its block types made 3D, plus the release's temporal constants (unet.py / attention.py)."""

    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: int = 8  # SD's name for the number of heads (each head is channels / 8 wide)
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    rotary_dim: int | None = 32  # unet.py: RotaryEmbedding(32), shared by every temporal attention; None: none
    relative_buckets: int | None = 32  # attention.py TemporalAttention: RelativePositionBias(heads, max_distance=32)
    relative_max_distance: int = 32

    def __post_init__(self):
        self.down_block_types = tuple(t.replace("2D", "3D") for t in self.down_block_types)  # SD's names read too
        self.up_block_types = tuple(t.replace("2D", "3D") for t in self.up_block_types)
        self.block_out_channels = tuple(self.block_out_channels)
        if len(self.down_block_types) != len(self.block_out_channels) or len(self.up_block_types) != len(
                self.block_out_channels):
            raise ValueError("down_block_types, up_block_types and block_out_channels need one entry per level")
        for c in self.block_out_channels:
            if c % self.attention_head_dim or (self.rotary_dim and c // self.attention_head_dim < self.rotary_dim):
                raise ValueError(f"channels {c} must split into {self.attention_head_dim} heads of at least "
                                 f"rotary_dim={self.rotary_dim} channels")


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """A 2D layer on each frame: (B, C, F, H, W) -> (B F, C, H, W) -> fn -> (B, C', F, H', W')."""
    b, _, f = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, f)).transpose(1, 2)


class ResnetBlock3D(ResnetBlock2D):
    """diffusers' ResnetBlock2D layers (same keys); convolutions per frame, GroupNorms over all frames at once."""

    def modulated(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """conv1(act(norm1(x))) + the timestep's projection: where the timestep first enters the input."""
        h = per_frame(self.conv1, self.nonlinearity(self.norm1(x)))
        return h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None, None]

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.modulated(x, temb)
        h = per_frame(self.conv2, self.dropout(self.nonlinearity(self.norm2(h))))
        if self.conv_shortcut is not None:
            x = per_frame(self.conv_shortcut, x)
        return (x + h) / self.output_scale_factor


def relative_buckets(frames: int, num_buckets: int, max_distance: int, device) -> torch.Tensor:
    """(F, F) bucket of each (query i, key j) frame pair, as attention.py RelativePositionBias: T5's
    bidirectional buckets of i - j, half of them for each sign, exact below num_buckets / 4, log-spaced above."""
    pos = torch.arange(frames, device=device)
    n = pos[:, None] - pos[None, :]  # i - j (the release's -(k_pos - q_pos))
    half = num_buckets // 2
    exact = half // 2
    base = (n < 0).long() * half
    n = n.abs()
    far = exact + (torch.log(n.clamp(min=1).float() / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    return base + torch.where(n < exact, n, far.clamp(max=half - 1))


class RelativePositionBias(nn.Module):
    def __init__(self, heads: int, num_buckets: int, max_distance: int):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, frames: int) -> torch.Tensor:
        buckets = relative_buckets(frames, self.num_buckets, self.max_distance, self.relative_attention_bias.weight.device)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)  # (heads, F, F)


class TemporalAttention(Attention):
    """Self-attention over frames, (B N, F, C) -> (B N, F, C): rotary positions on each head's first `rotary_dim`
    channels (queries and keys), the relative position bias added to the scores (attention.py TemporalAttention)."""

    def __init__(self, dim: int, heads: int, rotary_dim: int | None, buckets: int | None, max_distance: int):
        super().__init__(dim, heads, dim // heads)
        self.rotary_dim = rotary_dim
        if buckets:
            self.time_rel_pos_bias = RelativePositionBias(heads, buckets, max_distance)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        d = self.rotary_dim
        return torch.cat([apply_rope(x[..., :d], cos, sin), x[..., d:]], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        q, k, v = (self.split_heads(t) for t in self.project_qkv(x))  # (B N, heads, F, d)
        if self.rotary_dim:
            cos, sin = rope_1d(self.rotary_dim, torch.arange(frames, device=x.device))
            q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
        bias = self.time_rel_pos_bias(frames).to(q.dtype) if hasattr(self, "time_rel_pos_bias") else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # bias (heads, F, F): broadcast over B N
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """attention.py BasicTransformerBlock at inference: spatial self-attention, cross-attention to the text, temporal
    attention, GEGLU MLP, each pre-LayerNorm and residual, each through its cache hook point."""

    def __init__(self, dim: int, heads: int, cross_dim: int, config: LaVieUNetConfig, index: int):
        super().__init__()
        self.index = index
        self.norm1, self.norm2, self.norm_temp, self.norm3 = (nn.LayerNorm(dim) for _ in range(4))
        self.attn1 = Attention(dim, heads, dim // heads)
        self.attn2 = Attention(dim, heads, dim // heads, cross_attention_dim=cross_dim)
        self.attn_temp = TemporalAttention(dim, heads, config.rotary_dim, config.relative_buckets,
                                           config.relative_max_distance)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, text: torch.Tensor, frames: int, hooks) -> torch.Tensor:
        """x (B F, N, C) one frame's tokens per row; text (B, S, C_text). The base model's order; a model that
        places its temporal attention elsewhere (the release's interpolation UNet: after the MLP) reorders these."""
        x = self.spatial(x, hooks)
        x = self.cross(x, text, frames, hooks)
        x = self.temporal(x, frames, hooks)
        return self.mlp(x, hooks)

    def spatial(self, x: torch.Tensor, hooks) -> torch.Tensor:
        return x + module_call(hooks, "spatial", self.index, lambda: self.attn1(self.norm1(x)), block="spatial")

    def cross(self, x: torch.Tensor, text: torch.Tensor, frames: int, hooks) -> torch.Tensor:
        bf, n, c = x.shape  # every frame of a sample attends to the same text: one query row of F * N tokens
        return x + module_call(hooks, "cross", self.index, lambda: self.attn2(
            self.norm2(x).reshape(bf // frames, frames * n, c), text).reshape(bf, n, c), block="spatial")

    def temporal(self, x: torch.Tensor, frames: int, hooks) -> torch.Tensor:
        bf, n, c = x.shape
        b = bf // frames
        t = x.unflatten(0, (b, frames)).transpose(1, 2).reshape(b * n, frames, c)  # (B N, F, C)
        t = t + module_call(hooks, "temporal", self.index, lambda: self.attn_temp(self.norm_temp(t)), block="spatial")
        return t.unflatten(0, (b, n)).transpose(1, 2).reshape(bf, n, c)  # (B F, N, C)

    def mlp(self, x: torch.Tensor, hooks) -> torch.Tensor:
        return x + module_call(hooks, "mlp", self.index, lambda: self.ff(self.norm3(x)), block="spatial")


class Transformer3D(nn.Module):
    """attention.py Transformer3DModel (one block): per frame GroupNorm -> 1x1 proj_in -> tokens -> block ->
    1x1 proj_out, plus the input."""

    def __init__(self, channels: int, config: LaVieUNetConfig, index: int, block_cls: type):
        super().__init__()
        self.norm = nn.GroupNorm(config.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([block_cls(
            channels, config.attention_head_dim, config.cross_attention_dim, config, index)])
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor, hooks) -> torch.Tensor:
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        tokens = self.proj_in(self.norm(frames)).flatten(2).transpose(1, 2)  # (B F, H W, C)
        for block in self.transformer_blocks:
            tokens = block(tokens, text, f, hooks)
        out = self.proj_out(tokens.transpose(1, 2).reshape(b * f, c, h, w)) + frames
        return out.unflatten(0, (b, f)).transpose(1, 2)  # (B, C, F, H, W)


class Level(nn.Module):
    """One level of the U (unet_blocks.py Down/Up/Mid blocks): `resnets`, `attentions` where it cross-attends,
    and its down- or upsampler, under the release's keys."""

    def __init__(self, resnets: list, attentions: list | None, downsample: int | None = None,
                 upsample: int | None = None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions is not None:
            self.attentions = nn.ModuleList(attentions)
        if downsample is not None:
            self.downsamplers = nn.ModuleList([Downsample2D(downsample, use_conv=True, out_channels=downsample,
                                                            padding=1, name="op")])
        if upsample is not None:
            self.upsamplers = nn.ModuleList([Upsample2D(upsample, use_conv=True, out_channels=upsample)])

    def layer(self, j: int, x: torch.Tensor, temb, text, hooks) -> torch.Tensor:
        x = self.resnets[j](x, temb)
        return self.attentions[j](x, text, hooks) if hasattr(self, "attentions") else x


def unit_runner(units: list, skips: list):
    """The block stack's `run(h, start, stop)` over a UNet's units; a run from the start resets the skips to its input
    (the skip the first up block takes is conv_in's output)."""

    def run(h, start=0, stop=None):
        if start == 0:
            skips[:] = [h]
        for unit in units[start:stop]:
            h = unit(h)
        return h

    return run


class LaVieUNet3DModel(PretrainedModel, CacheMixin):
    """forward(sample (B, C, F, H, W), timestep (B,) or scalar, text (B, S, C_text)) -> the noise (B, C_out, F, H, W)."""

    config_class = LaVieUNetConfig
    class_name = "LaVieUNet3DModel"
    block_cls = TransformerBlock  # a stage whose blocks differ (the interpolation UNet) subclasses it and sets this
    compiled_forward = "forward"  # compile=True with no stack or module-hook cache: one graph (compile.py)
    # rotary_embedding_torch keeps its fixed frequencies as a tensor in every temporal attention (attn_temp.rotary_emb
    # .freqs): a release's checkpoint may carry them; they are the formula's, recomputed here (rope_1d)
    release_only = ("rotary_emb",)

    def __init__(self, config: LaVieUNetConfig):
        super().__init__()
        self.config = c = config
        ch = c.block_out_channels
        temb = ch[0] * 4
        self.parallel = ParallelState()
        self.conv_in = nn.Conv2d(c.in_channels, ch[0], 3, padding=1)
        self.time_proj = Timesteps(ch[0], c.flip_sin_to_cos, c.freq_shift)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        index = itertools.count()  # the transformer blocks' order in the forward: their cache-site index

        def resnet(cin: int, cout: int) -> ResnetBlock3D:
            return ResnetBlock3D(in_channels=cin, out_channels=cout, temb_channels=temb, eps=c.norm_eps,
                                 groups=c.norm_num_groups, non_linearity="silu")

        def attentions(cross: bool, channels: int, n: int) -> list | None:
            return [Transformer3D(channels, c, next(index), self.block_cls) for _ in range(n)] if cross else None

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(c.down_block_types):
            cin, cout, last = ch[max(i - 1, 0)], ch[i], i == len(ch) - 1
            self.down_blocks.append(Level([resnet(cin if j == 0 else cout, cout) for j in range(c.layers_per_block)],
                                          attentions(kind.startswith("CrossAttn"), cout, c.layers_per_block),
                                          downsample=None if last else cout))
        self.mid_block = Level([resnet(ch[-1], ch[-1]), resnet(ch[-1], ch[-1])], attentions(True, ch[-1], 1))
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        for i, kind in enumerate(c.up_block_types):
            prev, cout, skip_in = rev[max(i - 1, 0)], rev[i], rev[min(i + 1, len(ch) - 1)]
            n = c.layers_per_block + 1
            resnets = [resnet((prev if j == 0 else cout) + (skip_in if j == n - 1 else cout), cout) for j in range(n)]
            self.up_blocks.append(Level(resnets, attentions(kind.startswith("CrossAttn"), cout, n),
                                        upsample=None if i == len(ch) - 1 else cout))
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, ch[0], eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[0], c.out_channels, 3, padding=1)

    def set_parallel(self, state: ParallelState) -> None:
        if state.sp_size > 1:
            raise ValueError("LaVie's UNet runs no sequence parallelism (its latents are small); use cfg_parallel "
                             "with num_gpus=2")
        self.parallel = state

    @property
    def down_units(self) -> int:
        """The U's down units (each leaves a skip connection): layers, and a downsampler per level but the last."""
        c = self.config
        return len(c.block_out_channels) * (c.layers_per_block + 1) - 1

    def units(self, temb: torch.Tensor, text: torch.Tensor, hooks, skips: list, upsample_sizes: bool) -> list:
        """The U as a list of steps h -> h sharing `skips` (conv_in's output first): down units push, up units pop."""

        def down(level, j):
            def unit(h):
                h = level.layer(j, h, temb, text, hooks) if j < len(level.resnets) else \
                    per_frame(level.downsamplers[0], h)
                skips.append(h)
                return h
            return unit

        def up(level, j, last):
            def unit(h):
                h = level.layer(j, torch.cat([h, skips.pop()], dim=1), temb, text, hooks)
                if last and hasattr(level, "upsamplers"):  # the release forwards the skip's size when not a multiple
                    size = tuple(skips[-1].shape[-2:]) if upsample_sizes else None
                    h = per_frame(lambda x: level.upsamplers[0](x, size), h)
                return h
            return unit

        def mid(h):
            h = self.mid_block.resnets[0](h, temb)
            h = self.mid_block.attentions[0](h, text, hooks)
            return self.mid_block.resnets[1](h, temb)

        out = []
        for level in self.down_blocks:
            out += [down(level, j) for j in range(len(level.resnets) + hasattr(level, "downsamplers"))]
        out.append(mid)
        for level in self.up_blocks:
            n = len(level.resnets)
            out += [up(level, j, j == n - 1) for j in range(n)]
        return out

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b = sample.shape[0]
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        temb = self.time_embedding(self.time_proj(timestep).to(self.dtype))  # (B, 4 C0)
        upsample_sizes = any(s % 2 ** (len(self.up_blocks) - 1) for s in sample.shape[-2:])
        h = per_frame(self.conv_in, sample)  # (B, C0, F, H, W)
        skips: list = []
        units = self.units(temb, text, self.module_hooks(), skips, upsample_sizes)

        run = unit_runner(units, skips)
        # TeaCache's indicator: the UNet has no adaLN, so the timestep-modulated input is where the timestep first
        # meets the noisy input, the first ResNet's conv1(act(norm1(h))) + time_emb_proj(act(temb)) (docs)
        h = self.cache_stack(run, h, indicator=lambda: self.down_blocks[0].resnets[0].modulated(h, temb),
                             num_units=len(units), down_units=self.down_units)
        h = self.conv_act(self.conv_norm_out(h))  # GroupNorm over all frames, as the release's 5D call
        return per_frame(self.conv_out, h)
