"""Open-Sora-Plan CausalVAE (4x8x8), v1.1 and v1.2: a causal video autoencoder.

Loads the `vae/` folder of LanguageBind/Open-Sora-Plan-v1.2.0 or -v1.1.0 (config.json with CausalVAEModel's
fields, weights as safetensors or the release's .ckpt) with the release's key names
(opensora/models/causalvideovae/ at tag v1.2.0, opensora/models/ae/videobase/ at tag v1.1.0).

Causal in time: every 3D conv pads the past with copies of the first frame (never the future),
so the first frame gets a latent frame of its own and each later group of 4 frames one more:
T frames -> (T - 1) / 4 + 1 latent frames (9 -> 3, 17 -> 5, 29 -> 8, 65 -> 17, 93 -> 24), 8x spatially.
As in the release, the 3D blocks' GroupNorm statistics span the whole clip, so the encoder as a
whole is causal in its convolutions only.

Block types are named by strings in the config, as the release does. The two releases share every
block but their resampling:
- v1.2 (the defaults): encoder 2D conv_in, ResnetBlock2D x2 then ResnetBlock3D x2, Downsample (2D) then
  Spatial2xTime2x3DDownsample x2; decoder ResnetBlock3D, SpatialUpsample2x, Spatial2xTime2x3DUpsample x2.
- v1.1 (CAUSALVAE_V110): the same encoder / decoder blocks, but space and time are resampled by separate
  modules at one level: Downsample + TimeDownsampleRes2x (encoder levels 1, 2), SpatialUpsample2x +
  TimeUpsampleRes2x (decoder levels 2, 3); the time modules mix a fixed path (average pooling /
  trilinear interpolation) with a conv by a learned sigmoid(mix_factor).
Both: mid ResnetBlock3D / AttnBlock3DFix / ResnetBlock3D, GroupNorm(32, eps 1e-6) everywhere (widths
are multiples of 32 in the releases; the tiny presets set norm_num_groups).
"""

import glob
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from videosys.models.modules.pretrained import PretrainedModel
from videosys.utils.hub import read_state_dict

SCALING_FACTOR = 0.18215  # CausalVAEModelWrapper: latents = posterior sample * 0.18215
# LanguageBind/Open-Sora-Plan-v1.1.0 vae/config.json: the fields that differ from v1.2's (the defaults below)
CAUSALVAE_V110 = dict(
    encoder_attention="AttnBlock3DFix", decoder_attention="AttnBlock3DFix",
    encoder_spatial_downsample=["Downsample", "Downsample", "Downsample", ""],
    encoder_temporal_downsample=["", "TimeDownsampleRes2x", "TimeDownsampleRes2x", ""],
    decoder_spatial_upsample=["", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x"],
    decoder_temporal_upsample=["", "", "TimeUpsampleRes2x", "TimeUpsampleRes2x"])


@dataclass
class CausalVAEConfig:
    """CausalVAEModel config.json fields; defaults are the v1.2 release's (CausalVAEModel_D4_4x8x8)."""

    hidden_size: int = 128
    z_channels: int = 4
    hidden_size_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    attn_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.0
    resolution: int = 256
    double_z: bool = True
    embed_dim: int = 4
    num_res_blocks: int = 2
    q_conv: str = "CausalConv3d"
    encoder_conv_in: str = "Conv2d"
    encoder_conv_out: str = "CausalConv3d"
    encoder_attention: str = "AttnBlock3DFix"
    encoder_resnet_blocks: list[str] = field(
        default_factory=lambda: ["ResnetBlock2D", "ResnetBlock2D", "ResnetBlock3D", "ResnetBlock3D"])
    encoder_spatial_downsample: list[str] = field(
        default_factory=lambda: ["Downsample", "Spatial2xTime2x3DDownsample", "Spatial2xTime2x3DDownsample", ""])
    encoder_temporal_downsample: list[str] = field(default_factory=lambda: ["", "", "", ""])
    encoder_mid_resnet: str = "ResnetBlock3D"
    decoder_conv_in: str = "CausalConv3d"
    decoder_conv_out: str = "CausalConv3d"
    decoder_attention: str = "AttnBlock3DFix"
    decoder_resnet_blocks: list[str] = field(default_factory=lambda: ["ResnetBlock3D"] * 4)
    decoder_spatial_upsample: list[str] = field(
        default_factory=lambda: ["", "SpatialUpsample2x", "Spatial2xTime2x3DUpsample", "Spatial2xTime2x3DUpsample"])
    decoder_temporal_upsample: list[str] = field(default_factory=lambda: ["", "", "", ""])
    decoder_mid_resnet: str = "ResnetBlock3D"
    use_quant_layer: bool = True
    norm_num_groups: int = 32  # not in the release's config (always 32); lets a tiny model be narrow

    def __post_init__(self):
        known = set(_BLOCKS) | {""}
        names = [self.q_conv, self.encoder_conv_in, self.encoder_conv_out, self.encoder_attention,
                 self.encoder_mid_resnet, self.decoder_conv_in, self.decoder_conv_out, self.decoder_attention,
                 self.decoder_mid_resnet, *self.encoder_resnet_blocks, *self.encoder_spatial_downsample,
                 *self.encoder_temporal_downsample, *self.decoder_resnet_blocks, *self.decoder_spatial_upsample,
                 *self.decoder_temporal_upsample]
        unknown = sorted({n for n in names if n not in known})
        if unknown:
            raise ValueError(f"CausalVAE block types not implemented: {unknown}; known: {sorted(_BLOCKS)}")
        if self.attn_resolutions:
            raise ValueError("attention at down/up levels (attn_resolutions) is not used by the releases")
        levels = len(self.hidden_size_mult)
        for name in ("encoder_resnet_blocks", "encoder_spatial_downsample", "encoder_temporal_downsample",
                     "decoder_resnet_blocks", "decoder_spatial_upsample", "decoder_temporal_upsample"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} needs one entry per level ({levels})")

    @property
    def temporal_ratio(self) -> int:
        return 2 ** sum(1 for n in self.encoder_spatial_downsample + self.encoder_temporal_downsample if "Time" in n)

    @property
    def spatial_ratio(self) -> int:
        return 2 ** sum(1 for n in self.encoder_spatial_downsample if n)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def per_frame(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to each frame of (B, C, T, H, W)."""
    b, c, t, h, w = x.shape
    out = module(x.transpose(1, 2).reshape(b * t, c, h, w))
    return out.view(b, t, *out.shape[1:]).transpose(1, 2)


class Conv2d(nn.Conv2d):
    """A 2D conv on each frame of (B, C, T, H, W) (or on (N, C, H, W))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(super().forward, x) if x.ndim == 5 else super().forward(x)


class CausalConv3d(nn.Module):
    """3D conv whose temporal padding repeats the first frame in front (never looks at the future).

    Key `conv.*`; spatial padding as given, no temporal padding inside the conv.
    """

    def __init__(self, chan_in: int, chan_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        kernel = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        padding = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.time_pad = kernel[0] - 1
        self.conv = nn.Conv3d(chan_in, chan_out, kernel, stride=stride, padding=(0, *padding[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class ResnetBlock2D(nn.Module):
    """GroupNorm -> swish -> conv, twice, per frame (norms see one frame at a time)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def frame(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self.frame, x)


class ResnetBlock3D(nn.Module):
    """GroupNorm over (C, T, H, W) -> swish -> causal 3D conv, twice."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock3DFix(nn.Module):
    """Single-head attention within each frame (H*W tokens), GroupNorm over the whole clip; 1x1x1 convs."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (CausalConv3d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, t, height, width = h.shape
        q, k, v = (f(h).permute(0, 2, 3, 4, 1).reshape(b * t, 1, height * width, c) for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B*T, 1, HW, C), scale c ** -0.5 as the release
        out = out.view(b, t, height, width, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """2x spatial, per frame: zero pad right / bottom by one, 3x3 conv stride 2."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(lambda f: self.conv(F.pad(f, (0, 1, 0, 1))), x)


class Spatial2xTime2x3DDownsample(nn.Module):
    """2x in time and space: causal 3x3x3 conv, stride 2; T -> (T - 1) / 2 + 1 (the first frame stays alone)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1, 0, 0)))


class SpatialUpsample2x(nn.Module):
    """Nearest 2x spatial upsampling, then a (1, 3, 3) conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, (1, 3, 3), padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = F.interpolate(x.reshape(b, c * t, h, w), scale_factor=2, mode="nearest").view(b, c, t, 2 * h, 2 * w)
        return self.conv(x)


class Spatial2xTime2x3DUpsample(nn.Module):
    """Trilinear upsampling, the first frame 2x in space only, the rest 2x in time too (T -> 2T - 1); causal conv."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = F.interpolate(x[:, :, :1], scale_factor=(1, 2, 2), mode="trilinear")
        if x.shape[2] > 1:
            rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 2, 2), mode="trilinear")
            first = torch.cat([first, rest], dim=2)
        return self.conv(first)


class TimeDownsampleRes2x(nn.Module):
    """2x in time (v1.1): sigmoid(mix_factor) * average pooling + the rest * a strided conv, both over the clip
    with two copies of the first frame in front; T -> (T - 1) / 2 + 1. The conv is a plain Conv3d (key `conv.*`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mix_factor: float = 2.0):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=(2, 1, 1), padding=(0, 1, 1))
        self.mix_factor = nn.Parameter(torch.tensor([mix_factor]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :, :1].expand(-1, -1, self.kernel_size - 1, -1, -1), x], dim=2)
        alpha = torch.sigmoid(self.mix_factor)
        pooled = F.avg_pool3d(x, (self.kernel_size, 1, 1), stride=(2, 1, 1))
        return alpha * pooled + (1 - alpha) * self.conv(x)


class TimeUpsampleRes2x(nn.Module):
    """2x in time (v1.1): the frames after the first trilinearly doubled (T -> 2T - 1), then
    sigmoid(mix_factor) * that + the rest * a causal conv of it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, mix_factor: float = 2.0):
        super().__init__()
        self.conv = CausalConv3d(in_channels, out_channels, kernel_size, padding=1)
        self.mix_factor = nn.Parameter(torch.tensor([mix_factor]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] > 1:
            rest = F.interpolate(x[:, :, 1:], scale_factor=(2, 1, 1), mode="trilinear")
            x = torch.cat([x[:, :, :1], rest], dim=2)
        alpha = torch.sigmoid(self.mix_factor)
        return alpha * x + (1 - alpha) * self.conv(x)


_BLOCKS = {
    "Conv2d": Conv2d, "CausalConv3d": CausalConv3d, "ResnetBlock2D": ResnetBlock2D, "ResnetBlock3D": ResnetBlock3D,
    "AttnBlock3DFix": AttnBlock3DFix, "Downsample": Downsample,
    "Spatial2xTime2x3DDownsample": Spatial2xTime2x3DDownsample, "SpatialUpsample2x": SpatialUpsample2x,
    "Spatial2xTime2x3DUpsample": Spatial2xTime2x3DUpsample, "TimeDownsampleRes2x": TimeDownsampleRes2x,
    "TimeUpsampleRes2x": TimeUpsampleRes2x,
}


def _level(blocks: nn.ModuleList, spatial: str, temporal: str, channels: int, names: tuple[str, str]) -> nn.Module:
    """One resolution level: its blocks, then the spatial and / or temporal resampling the config names
    (v1.2 names one module that does both, v1.1 one of each), under the release's attribute names."""
    level = nn.Module()
    level.block = blocks
    for kind, name in zip((spatial, temporal), names):
        if kind:
            setattr(level, name, _BLOCKS[kind](channels, channels))
    return level


def _mid(resnet: str, attention: str, channels: int, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = _BLOCKS[resnet](channels, channels, groups)
    mid.attn_1 = _BLOCKS[attention](channels, groups)
    mid.block_2 = _BLOCKS[resnet](channels, channels, groups)
    return mid


def _run_mid(mid: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: CausalVAEConfig):
        super().__init__()
        g, width = cfg.norm_num_groups, cfg.hidden_size
        self.conv_in = _BLOCKS[cfg.encoder_conv_in](3, width, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        block_in = width
        for i, mult in enumerate(cfg.hidden_size_mult):
            block_out = width * mult
            resnet = _BLOCKS[cfg.encoder_resnet_blocks[i]]
            blocks = nn.ModuleList(resnet(block_in if j == 0 else block_out, block_out, g)
                                   for j in range(cfg.num_res_blocks))
            block_in = block_out
            self.down.append(_level(blocks, cfg.encoder_spatial_downsample[i], cfg.encoder_temporal_downsample[i],
                                    block_in, ("downsample", "time_downsample")))
        self.mid = _mid(cfg.encoder_mid_resnet, cfg.encoder_attention, block_in, g)
        self.norm_out = nn.GroupNorm(g, block_in, eps=1e-6)
        out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = _BLOCKS[cfg.encoder_conv_out](block_in, out, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            for name in ("downsample", "time_downsample"):
                if hasattr(level, name):
                    h = getattr(level, name)(h)
        h = _run_mid(self.mid, h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: CausalVAEConfig):
        super().__init__()
        g, width, levels = cfg.norm_num_groups, cfg.hidden_size, len(cfg.hidden_size_mult)
        block_in = width * cfg.hidden_size_mult[-1]
        self.conv_in = _BLOCKS[cfg.decoder_conv_in](cfg.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = _mid(cfg.decoder_mid_resnet, cfg.decoder_attention, block_in, g)
        up = []
        for i in reversed(range(levels)):  # built deepest first, stored by level index as the release
            block_out = width * cfg.hidden_size_mult[i]
            resnet = _BLOCKS[cfg.decoder_resnet_blocks[i]]
            blocks = nn.ModuleList(resnet(block_in if j == 0 else block_out, block_out, g)
                                   for j in range(cfg.num_res_blocks + 1))
            block_in = block_out
            up.insert(0, _level(blocks, cfg.decoder_spatial_upsample[i], cfg.decoder_temporal_upsample[i], block_in,
                                ("upsample", "time_upsample")))
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(g, block_in, eps=1e-6)
        self.conv_out = _BLOCKS[cfg.decoder_conv_out](block_in, 3, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            for name in ("upsample", "time_upsample"):
                if hasattr(level, name):
                    h = getattr(level, name)(h)
        return self.conv_out(swish(self.norm_out(h)))


class CausalVAE(PretrainedModel):
    """encode: (B, 3, T, H, W) in [-1, 1] -> scaled latents (B, 4, (T-1)/4+1, H/8, W/8); decode: the inverse,
    returning (B, 3, T, H, W) (the release's wrapper permutes to (B, T, C, H, W); we keep channels first)."""

    config_class = CausalVAEConfig
    class_name = "CausalVAEModel"
    scaling_factor = SCALING_FACTOR

    def __init__(self, config: CausalVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_layer:
            quant = _BLOCKS[config.q_conv]
            self.quant_conv = quant(2 * config.z_channels, 2 * config.embed_dim, 1)
            self.post_quant_conv = quant(config.embed_dim, config.z_channels, 1)

    def latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        rt, rs = self.config.temporal_ratio, self.config.spatial_ratio
        if (num_frames - 1) % rt:
            raise ValueError(f"num_frames={num_frames}: CausalVAE takes 1 + {rt}k frames (e.g. 1, 29, 93)")
        if height % rs or width % rs:
            raise ValueError(f"height / width ({height}, {width}) must be divisible by {rs}")
        return (num_frames - 1) // rt + 1, height // rs, width // rs

    def moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (clamped to [-30, 20] as the release)."""
        self.latent_size(*video.shape[2:])
        h = self.encoder(video)
        if self.config.use_quant_layer:
            h = self.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        """(B, 3, T, H, W) -> scaled latents; sample=False takes the posterior mode (deterministic)."""
        mean, logvar = self.moments(video)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * noise
        return z * self.scaling_factor

    # ---- decoding, whole or in overlapping tiles ------------------------------------------------
    tiling: dict | None = None  # set by enable_tiling

    def enable_tiling(self, sample_size: int = 512, latent_size: int = 64, latent_frames: int = 8,
                      overlap_factor: float = 0.125) -> None:
        """Decode large latents in overlapping tiles, as the release's sampler (--enable_tiling): spatial
        tiles of `latent_size` latents (`sample_size` pixels) blended over `overlap_factor`, and chunks of
        `latent_frames` latent frames sharing one frame (its decoded first frame is dropped)."""
        if latent_frames < 2 or not 0 <= overlap_factor < 1 or latent_size * self.config.spatial_ratio != sample_size:
            raise ValueError("tiling needs latent_frames >= 2, 0 <= overlap_factor < 1 and "
                             "sample_size = latent_size * the spatial ratio")
        self.tiling = dict(sample_size=sample_size, latent_size=latent_size, latent_frames=latent_frames,
                           overlap_factor=overlap_factor)

    def disable_tiling(self) -> None:
        self.tiling = None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, t, h, w) scaled latents -> (B, 3, (t - 1) * 4 + 1, 8h, 8w) in [-1, 1] (roughly)."""
        z = latents / self.scaling_factor
        tiling = self.tiling
        if tiling is not None and (z.shape[2] > tiling["latent_frames"] or max(z.shape[3:]) > tiling["latent_size"]):
            return self.tiled_decode(z)
        return self.decode_tile(z)

    def decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.use_quant_layer:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def tiled_decode(self, z: torch.Tensor) -> torch.Tensor:
        """The release's tiled_decode: time chunks overlapping by one latent frame, each decoded in
        blended spatial tiles (tiled_decode2d)."""
        t, step = z.shape[2], self.tiling["latent_frames"] - 1
        starts = list(range(0, t, step))
        chunks = [(s, min(s + step + 1, t)) for s in starts]
        if len(chunks) > 1 and chunks[-1][1] - chunks[-1][0] == 1 and chunks[-2][1] == t:
            chunks.pop()  # the previous chunk already reached the end
        out = []
        for i, (start, stop) in enumerate(chunks):
            video = self.tiled_decode_2d(z[:, :, start:stop])
            out.append(video if i == 0 else video[:, :, 1:])  # the shared frame was decoded by the chunk before
        return torch.cat(out, dim=2)

    def tiled_decode_2d(self, z: torch.Tensor) -> torch.Tensor:
        size, latent, factor = self.tiling["sample_size"], self.tiling["latent_size"], self.tiling["overlap_factor"]
        stride = int(latent * (1 - factor))
        blend, keep = int(size * factor), size - int(size * factor)
        rows = [[self.decode_tile(z[:, :, :, i:i + latent, j:j + latent]) for j in range(0, z.shape[4], stride)]
                for i in range(0, z.shape[3], stride)]
        out_rows = []
        for i, row in enumerate(rows):
            out_row = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = _blend(rows[i - 1][j], tile, blend, dim=3)
                if j > 0:
                    tile = _blend(row[j - 1], tile, blend, dim=4)
                row[j] = tile  # as the release (blending in place): later neighbours blend with the blended tile
                out_row.append(tile[:, :, :, :keep, :keep])
            out_rows.append(torch.cat(out_row, dim=4))
        return torch.cat(out_rows, dim=3)

    @classmethod
    def read_checkpoint(cls, folder: str) -> dict[str, torch.Tensor]:
        """The release's vae/ folder: safetensors, or a training .ckpt (EMA weights first); the training
        loss's weights (`loss.*`, in the v1.1 release) are dropped."""
        ckpts = sorted(glob.glob(os.path.join(folder, "*.ckpt")))
        state = read_ckpt(ckpts[-1]) if ckpts else read_state_dict(folder)
        return {k: v for k, v in state.items() if not k.startswith("loss.")}


def _blend(before: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Linear cross-fade from the end of `before` into the start of `tile` along `dim` (3 = rows, 4 = columns)."""
    extent = min(before.shape[dim], tile.shape[dim], extent)
    if extent == 0:
        return tile
    shape = [1] * tile.ndim
    shape[dim] = extent
    weight = (torch.arange(extent, device=tile.device, dtype=torch.float32) / extent).view(shape).to(tile.dtype)
    head = before.narrow(dim, before.shape[dim] - extent, extent) * (1 - weight) + tile.narrow(dim, 0, extent) * weight
    return torch.cat([head, tile.narrow(dim, extent, tile.shape[dim] - extent)], dim=dim)


def read_ckpt(path: str) -> dict[str, torch.Tensor]:
    """Weights of a CausalVAE training checkpoint as the release reads them (init_from_ckpt): the EMA
    weights when present, else state_dict (or its gen_model); the discriminator / loss weights are dropped."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("ema_state_dict"):
        state = {k.replace("module.", ""): v for k, v in ckpt["ema_state_dict"].items()}
    elif "state_dict" in ckpt:
        state = ckpt["state_dict"].get("gen_model", ckpt["state_dict"])
    else:
        state = ckpt
    return {k: v for k, v in state.items() if not k.startswith("loss.")}
