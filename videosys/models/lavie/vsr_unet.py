"""LaVie's video super-resolution UNet: Stable Diffusion's x4 upscaler UNet made 3D.

The release (Vchitect/LaVie, vsr/models/unet.py) takes the x4 upscaler's UNet (diffusers' UNet2DConditionModel
with the `stabilityai/stable-diffusion-x4-upscaler` config: 4 latent + 3 low-res-pixel input channels, the
noise level as a class embedding) and adds temporal layers, leaving every 2D part as it was:

- in each transformer, a temporal convolution resnet (kernel 3 over frames) before the spatial norm, and in each
  transformer block a temporal self-attention (rotary positions on 32 channels of each head and a learned
  relative-position bias: the base UNet's TemporalAttention, reused) between the cross-attention and the MLP;
- after each down block, the mid block and each up block, a temporal module: a temporal convolution resnet
  (kernel 5 over frames), a per-frame resnet and a zero-initialised 1x1 convolution added to the block's output.

The 2D parts here are diffusers' own modules (built by UNet2DConditionModel, run per frame); this file writes the
temporal parts and the forward that interleaves them. One thing in the release's 2D parts is not per frame: its
resnets (and the output norm) see (B, C, F, h, w) tensors, so their GroupNorms take their statistics over all
frames (`video_norm`); the transformers' norm runs per frame. With one frame the 2D path is diffusers' UNet.
Parameter names are the release's (`lavie_vsr.pt`'s "ema" state dict), so its checkpoint loads strictly.

Hook points, as the base UNet's (unet.py): each transformer block's attn1 ("spatial"), attn2 ("cross"), temporal
attention ("temporal") and MLP ("mlp") through `module_call`, index = the transformer's order in the forward; the U
as the block stack (`units`: down units leaving skips, the mid unit, up units taking them back; `down_units` for
DeepCache), TeaCache's indicator the first ResNet's timestep-modulated input.
"""

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from videosys.cache import CacheMixin, module_call
from videosys.core.parallel import ParallelState
from videosys.models.modules.pretrained import PretrainedModel
from videosys.models.lavie.unet import TemporalAttention, unit_runner

# vsr/models/attention.py TemporalAttention: RotaryEmbedding(32) shared by every temporal attention (unet.py),
# RelativePositionBias(heads, max_distance=32) with 32 buckets: the base UNet's temporal attention, same maths
ROTARY_DIM, REL_POS_BUCKETS, REL_POS_MAX_DISTANCE = 32, 32, 32


@dataclass
class LaVieVSRUNetConfig:
    """The release's vsr/configs/unet_3d_config.json: the x4 upscaler's UNet fields and the temporal ones."""

    in_channels: int = 7  # 4 latent channels + the 3 channels of the noised low-res frames
    out_channels: int = 4
    block_out_channels: tuple = (256, 512, 512, 1024)
    down_block_types: tuple = ("DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D")
    up_block_types: tuple = ("CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D")
    only_cross_attention: tuple = (True, True, True, False)
    layers_per_block: int = 2
    attention_head_dim: int = 8  # as in diffusers' SD configs this is the number of heads
    cross_attention_dim: int = 1024
    num_class_embeds: int = 1000  # the noise level's embedding
    max_noise_level: int = 350
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = True
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    sample_size: int = 128
    down_temporal_idx: tuple = (0, 1, 2, 3)
    mid_temporal: bool = True
    up_temporal_idx: tuple = (0, 1, 2, 3)
    temporal_module_config: dict = field(default_factory=lambda: {"attention_block_types": ["", ""]})
    video_condition: bool = False  # the release's sample.py sets it False
    use_first_frame: bool = False

    def __post_init__(self):
        for name in ("block_out_channels", "down_block_types", "up_block_types", "only_cross_attention",
                     "down_temporal_idx", "up_temporal_idx"):
            setattr(self, name, tuple(getattr(self, name)))
        self.down_block_types = tuple(t.replace("2D", "3D") for t in self.down_block_types)  # the 2D config's names too
        self.up_block_types = tuple(t.replace("2D", "3D") for t in self.up_block_types)
        # what the released model does not use is refused rather than ignored
        if self.video_condition:
            raise ValueError("LaVie VSR UNet: video_condition=True (low-res frames fed to each temporal module) is "
                             "not implemented; the release samples with video_condition=False")
        if self.use_first_frame:
            raise ValueError("LaVie VSR UNet: use_first_frame=True is not the VSR model's (vsr/configs uses False)")
        kinds = tuple(self.temporal_module_config.get("attention_block_types", ("", "")))
        if any(kinds):
            raise ValueError(f"LaVie VSR UNet: temporal_module_config.attention_block_types={list(kinds)} is not "
                             "implemented; the released model has none (['', ''])")

    def unet_2d_kwargs(self) -> dict:
        """The same UNet as diffusers' UNet2DConditionModel arguments (the x4 upscaler's unet/config.json)."""
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    block_out_channels=self.block_out_channels,
                    down_block_types=tuple(k.replace("3D", "2D") for k in self.down_block_types),
                    up_block_types=tuple(k.replace("3D", "2D") for k in self.up_block_types),
                    only_cross_attention=self.only_cross_attention, layers_per_block=self.layers_per_block,
                    attention_head_dim=self.attention_head_dim, cross_attention_dim=self.cross_attention_dim,
                    num_class_embeds=self.num_class_embeds, norm_num_groups=self.norm_num_groups,
                    norm_eps=self.norm_eps, use_linear_projection=self.use_linear_projection,
                    flip_sin_to_cos=self.flip_sin_to_cos, freq_shift=self.freq_shift,
                    downsample_padding=self.downsample_padding, mid_block_scale_factor=self.mid_block_scale_factor,
                    act_fn=self.act_fn, sample_size=self.sample_size)


class TemporalConvResnet(nn.Module):
    """The release's ResnetBlock3DCNN: a resnet whose first convolution runs over frames only (kernel (k, 1, 1)),
    its second over 3 frames; GroupNorm(32), SiLU, an optional time-embedding shift."""

    def __init__(self, channels: int, kernel: int, temb_channels: int | None, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv1 = nn.Conv3d(channels, channels, (kernel, 1, 1), padding=((kernel - 1) // 2, 0, 0))
        self.time_emb_proj = nn.Linear(temb_channels, channels) if temb_channels is not None else None
        self.norm2 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv2 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, C, F, h, w); temb: (B, D)
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None, None]
        return x + self.conv2(F.silu(self.norm2(h)))


def video_norm(norm: nn.GroupNorm, x: torch.Tensor, frames: int) -> torch.Tensor:
    """A GroupNorm over (B F, C, h, w) frames with its statistics over all F frames of a video (the release applies
    its 2D norms to (B, C, F, h, w) tensors)."""
    return norm(x.unflatten(0, (-1, frames)).transpose(1, 2)).transpose(1, 2).flatten(0, 1)


def video_resnet_modulated(resnet, x: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:
    """conv1(act(norm1(x))) + the timestep's projection: where the timestep first meets the input."""
    h = resnet.conv1(F.silu(video_norm(resnet.norm1, x, frames)))
    return h + resnet.time_emb_proj(F.silu(temb))[:, :, None, None]


def video_resnet(resnet, x: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:
    """diffusers' ResnetBlock2D (its modules) with the release's norms over all frames (ResnetBlock3D).
    x: (B F, C, h, w); temb: (B F, D)."""
    h = video_resnet_modulated(resnet, x, temb, frames)
    h = resnet.conv2(resnet.dropout(F.silu(video_norm(resnet.norm2, h, frames))))
    if resnet.conv_shortcut is not None:
        x = resnet.conv_shortcut(x)
    return (x + h) / resnet.output_scale_factor


class TemporalModule(nn.Module):
    """The release's TemporalModule3D without attention layers (the released config has none): a temporal
    convolution resnet, a per-frame resnet and a zero-initialised 1x1 convolution, added to the input."""

    def __init__(self, channels: int, temb_channels: int):
        super().__init__()
        from diffusers.models.resnet import ResnetBlock2D

        self.resblocks_3d_t = TemporalConvResnet(channels, 5, temb_channels)
        self.resblocks_3d_s = ResnetBlock2D(in_channels=channels, out_channels=channels, temb_channels=temb_channels,
                                            groups=32, groups_out=32, eps=1e-6)
        self.shift_conv = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.shift_conv.weight)
        nn.init.zeros_(self.shift_conv.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, frames: int) -> torch.Tensor:
        # x: (B F, C, h, w) per frame; temb: (B, D)
        video = x.unflatten(0, (-1, frames)).transpose(1, 2)  # (B, C, F, h, w)
        h = self.resblocks_3d_t(video, temb).transpose(1, 2).flatten(0, 1)  # (B F, C, h, w)
        h = video_resnet(self.resblocks_3d_s, h, temb.repeat_interleave(frames, 0), frames)
        return x + self.shift_conv(h)


class LaVieVSRUNet(PretrainedModel, CacheMixin):
    """The VSR UNet: forward(sample (B, 4, F, h, w), timestep, low_res (B, 3, F, h, w), text (B, L, D),
    noise_level (B,)) -> (B, 4, F, h, w), the v-prediction of the x4 upscaler."""

    config_class = LaVieVSRUNetConfig
    class_name = "LaVieVSRUNet"
    # rotary_embedding_torch keeps its (fixed) frequencies as a parameter, under the UNet and every temporal
    # attention that shares it; we compute the same table (rope_1d) and drop those keys
    release_only = ("temporal_rotary_emb", "rotary_emb")

    def __init__(self, config: LaVieVSRUNetConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = config
        self.parallel = ParallelState()
        unet = UNet2DConditionModel(**config.unet_2d_kwargs())  # the x4 upscaler's 2D UNet: its modules are ours
        for name in ("conv_in", "time_proj", "time_embedding", "class_embedding", "down_blocks", "mid_block",
                     "up_blocks", "conv_norm_out", "conv_act", "conv_out"):
            setattr(self, name, getattr(unet, name))
        temb = config.block_out_channels[0] * 4
        for index, transformer in enumerate(self.transformers()):
            transformer.cache_index = index  # its blocks' depth at the module hook points
            transformer.add_module("resblock_temporal", TemporalConvResnet(transformer.in_channels, 3, None))
            for block in transformer.transformer_blocks:
                dim = block.norm1.normalized_shape[0]
                block.add_module("attn_temporal", TemporalAttention(dim, block.attn1.heads, ROTARY_DIM, REL_POS_BUCKETS,
                                                                    REL_POS_MAX_DISTANCE))
                block.add_module("norm_temporal", nn.LayerNorm(dim))
        channels = config.block_out_channels
        self.down_temporal_blocks = nn.ModuleList(
            TemporalModule(c, temb) if i in config.down_temporal_idx else nn.Identity() for i, c in enumerate(channels))
        self.mid_temporal_block = TemporalModule(channels[-1], temb) if config.mid_temporal else None
        self.up_temporal_blocks = nn.ModuleList(
            TemporalModule(c, temb) if i in config.up_temporal_idx else nn.Identity()
            for i, c in enumerate(reversed(channels)))

    def transformers(self):
        """Every transformer of the UNet, in forward order (their index is the hook points' depth)."""
        blocks = [*self.down_blocks, self.mid_block, *self.up_blocks]
        return [t for b in blocks for t in getattr(b, "attentions", None) or ()]

    def set_parallel(self, state) -> None:
        """CFG parallelism only: the pipeline splits the branches; the UNet itself has no sequence parallelism."""
        if state.sp_size > 1:
            raise ValueError("LaVie's UNets have no sequence parallelism: use cfg_parallel with num_gpus=2")
        self.parallel = state

    @property
    def down_units(self) -> int:
        """The U's down units (each leaves a skip): layers, and a downsampler per level but the last (as the base's)."""
        c = self.config
        return len(c.block_out_channels) * (c.layers_per_block + 1) - 1

    # ---- forward ------------------------------------------------------------------------------
    def units(self, emb, emb_frames, text, frames: int, hooks, skips: list) -> list:
        """The U as steps h -> h sharing `skips` (conv_in's output first), the base UNet's units: down units push a
        skip, up units pop one; a level's temporal module follows its last unit (after its skip was kept, as the
        release applies it to the block's output)."""

        def layer(level, j, h):
            h = video_resnet(level.resnets[j], h, emb_frames, frames)
            if getattr(level, "attentions", None):
                t = level.attentions[j]
                h = self.video_transformer(t, h, text, frames, hooks, t.cache_index)
            return h

        def down(level, temporal, j, last):
            def unit(h):
                h = layer(level, j, h) if j < len(level.resnets) else level.downsamplers[0](h)
                skips.append(h)
                return self.temporal(temporal, h, emb, frames) if last else h
            return unit

        def mid(h):
            h = video_resnet(self.mid_block.resnets[0], h, emb_frames, frames)
            t = self.mid_block.attentions[0]
            h = self.video_transformer(t, h, text, frames, hooks, t.cache_index)
            h = video_resnet(self.mid_block.resnets[1], h, emb_frames, frames)
            return self.temporal(self.mid_temporal_block, h, emb, frames)

        def up(level, temporal, j, last):
            def unit(h):
                h = layer(level, j, torch.cat([h, skips.pop()], 1))
                if last and level.upsamplers is not None:
                    h = level.upsamplers[0](h, skips[-1].shape[-2:])  # the skip's size: odd sizes round as the release
                return self.temporal(temporal, h, emb, frames) if last else h
            return unit

        out = []
        for level, temporal in zip(self.down_blocks, self.down_temporal_blocks):
            n = len(level.resnets) + (level.downsamplers is not None)
            out += [down(level, temporal, j, j == n - 1) for j in range(n)]
        out.append(mid)
        for level, temporal in zip(self.up_blocks, self.up_temporal_blocks):
            n = len(level.resnets)
            out += [up(level, temporal, j, j == n - 1) for j in range(n)]
        return out

    def forward(self, sample: torch.Tensor, timestep, low_res: torch.Tensor, encoder_hidden_states: torch.Tensor,
                noise_level: torch.Tensor) -> torch.Tensor:
        b, _, frames = sample.shape[:3]
        x = torch.cat([sample, low_res], 1).transpose(1, 2).flatten(0, 1)  # (B F, 7, h, w): 2D parts per frame
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        emb = emb + self.class_embedding(noise_level.reshape(-1).expand(b)).to(sample.dtype)  # (B, D)
        emb_frames = emb.repeat_interleave(frames, 0)  # (B F, D)
        text = encoder_hidden_states.repeat_interleave(frames, 0)  # (B F, L, D)
        skips: list = []
        units = self.units(emb, emb_frames, text, frames, self.module_hooks(), skips)

        run = unit_runner(units, skips)
        h = self.conv_in(x)
        # TeaCache's indicator, as the base UNet's: the first ResNet's timestep-modulated input
        h = self.cache_stack(run, h, indicator=lambda: video_resnet_modulated(self.down_blocks[0].resnets[0], h,
                                                                               emb_frames, frames),
                             num_units=len(units), down_units=self.down_units)
        h = self.conv_out(self.conv_act(video_norm(self.conv_norm_out, h, frames)))
        return h.unflatten(0, (b, frames)).transpose(1, 2)  # (B, 4, F, h, w)

    @staticmethod
    def temporal(module, x, emb, frames):
        return x if module is None or isinstance(module, nn.Identity) else module(x, emb, frames)

    def video_transformer(self, transformer, x: torch.Tensor, text: torch.Tensor, frames: int, hooks, index: int):
        """The release's Transformer3DModel: temporal convolution, then diffusers' Transformer2DModel's layers
        with a temporal attention in each block."""
        x = transformer.resblock_temporal(x.unflatten(0, (-1, frames)).transpose(1, 2)).transpose(1, 2).flatten(0, 1)
        bf, c, h, w = x.shape
        tokens = transformer.proj_in(transformer.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c))  # (B F, hw, C)
        for block in transformer.transformer_blocks:
            tokens = self.video_block(block, tokens, text, frames, hooks, index)
        out = transformer.proj_out(tokens).reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return out + x

    @staticmethod
    def video_block(block, x: torch.Tensor, text: torch.Tensor, frames: int, hooks, index: int) -> torch.Tensor:
        """diffusers' BasicTransformerBlock (layer norms, attn1 over text where only_cross_attention, attn2 over
        text, feed-forward) with the release's temporal attention between the cross-attention and the MLP."""
        context = text if block.only_cross_attention else None
        x = x + module_call(hooks, "spatial", index, lambda: block.attn1(block.norm1(x), encoder_hidden_states=context))
        x = x + module_call(hooks, "cross", index, lambda: block.attn2(block.norm2(x), encoder_hidden_states=text),
                            block="spatial")
        n = x.shape[1]
        per_position = x.unflatten(0, (-1, frames)).transpose(1, 2).flatten(0, 1)  # (B hw, F, C)
        per_position = per_position + module_call(
            hooks, "temporal", index, lambda: block.attn_temporal(block.norm_temporal(per_position)), block="spatial")
        x = per_position.unflatten(0, (-1, n)).transpose(1, 2).flatten(0, 1)  # (B F, hw, C)
        return x + module_call(hooks, "mlp", index, lambda: block.ff(block.norm3(x)), block="spatial")


def config_from_upscaler(values: dict) -> LaVieVSRUNetConfig:
    """The x4 upscaler's unet/config.json (diffusers' UNet2DConditionModel) -> our config: its 2D fields with the
    release's temporal ones (vsr/configs/unet_3d_config.json is that file plus them); the 2D model's other fields
    (attention options it leaves at their defaults) are not read."""
    known = {f.name for f in dataclasses.fields(LaVieVSRUNetConfig)} - {"down_temporal_idx", "mid_temporal",
                                                                         "up_temporal_idx", "temporal_module_config"}
    return LaVieVSRUNetConfig(**{k: v for k, v in values.items() if k in known})
