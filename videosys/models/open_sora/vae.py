"""Open-Sora 1.2 VAE: an SDXL image VAE per frame, then a temporal VAE over the frame latents.

Loads hpcai-tech/OpenSora-VAE-v1.2 unchanged (config.json + model.safetensors, keys
`spatial_vae.module.*`, `temporal_vae.*`, `scale`, `shift`), as the original
`VideoAutoencoderPipeline` (hpcaitech/Open-Sora v1.2.0, opensora/models/vae/vae.py, vae_temporal.py).

  pixels (B, 3, T, H, W)
    -> spatial VAE per frame, x 0.18215            (B, 4, T, H/8, W/8)
    -> temporal VAE per chunk of 17 frames: each chunk is padded at the front to a multiple
       of 4 and compressed 4x in time (17 -> 5)     (B, 4, T', H/8, W/8)
    -> (z - shift) / scale
Decoding runs the same steps backwards and crops each chunk's front padding.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from videosys.models.modules.pretrained import PretrainedModel

SPATIAL_SCALE = 0.18215  # the fixed latent scale the release uses with the SDXL VAE (not its 0.13025)

# PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers vae/config.json: the SDXL VAE architecture
SDXL_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    norm_num_groups=32, act_fn="silu", down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024, scaling_factor=0.13025)

# VAE_Temporal_SD in the original
TEMPORAL_VAE_CONFIG = dict(in_out_channels=4, latent_embed_dim=4, embed_dim=4, filters=128, num_res_blocks=4,
                           channel_multipliers=(1, 2, 2, 4), temporal_downsample=(False, True, True), num_groups=32)


class CausalConv3d(nn.Module):
    """3D conv padded only in the past along time (zeros in front), 'same' in space. Key: `.conv`."""

    def __init__(self, chan_in: int, chan_out: int, kernel_size, stride=(1, 1, 1), bias: bool = True):
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        self.padding = (kw // 2, kw // 2, kh // 2, kh // 2, kt - stride[0], 0)  # (W, W, H, H, T front, T back)
        self.conv = nn.Conv3d(chan_in, chan_out, (kt, kh, kw), stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class ResBlock(nn.Module):
    def __init__(self, chan_in: int, chan_out: int, num_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, chan_in)
        self.conv1 = CausalConv3d(chan_in, chan_out, 3, bias=False)
        self.norm2 = nn.GroupNorm(num_groups, chan_out)
        self.conv2 = CausalConv3d(chan_out, chan_out, 3, bias=False)
        self.conv3 = CausalConv3d(chan_in, chan_out, 1, bias=False) if chan_in != chan_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv3 is None else self.conv3(x))


class TemporalEncoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, filters: int, num_res_blocks: int,
                 channel_multipliers, temporal_downsample, num_groups: int):
        super().__init__()
        self.conv_in = CausalConv3d(in_channels, filters, 3, bias=False)
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = filters
        for i, mult in enumerate(channel_multipliers):
            width = filters * mult
            self.block_res_blocks.append(nn.ModuleList(
                ResBlock(prev if j == 0 else width, width, num_groups) for j in range(num_res_blocks)))
            prev = width
            if i < len(channel_multipliers) - 1:
                # a level without time downsampling has no conv (an Identity keeps the indices of the keys)
                self.conv_blocks.append(CausalConv3d(width, width, 3, stride=(2, 1, 1))
                                        if temporal_downsample[i] else nn.Identity())
        self.res_blocks = nn.ModuleList(ResBlock(prev, prev, num_groups) for _ in range(num_res_blocks))
        self.norm1 = nn.GroupNorm(num_groups, prev)
        self.conv2 = CausalConv3d(prev, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, blocks in enumerate(self.block_res_blocks):
            for block in blocks:
                x = block(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(F.silu(self.norm1(x)))


class TemporalDecoder(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, filters: int, num_res_blocks: int,
                 channel_multipliers, temporal_downsample, num_groups: int):
        super().__init__()
        self.temporal_downsample = tuple(temporal_downsample)
        top = filters * channel_multipliers[-1]
        self.conv1 = CausalConv3d(in_channels, top, 3)
        self.res_blocks = nn.ModuleList(ResBlock(top, top, num_groups) for _ in range(num_res_blocks))
        levels = len(channel_multipliers)
        blocks, convs = [None] * levels, [None] * (levels - 1)
        prev = top
        for i in reversed(range(levels)):  # built deepest first, stored shallowest first (the original's indices)
            width = filters * channel_multipliers[i]
            blocks[i] = nn.ModuleList(ResBlock(prev if j == 0 else width, width, num_groups)
                                      for j in range(num_res_blocks))
            prev = width
            if i > 0:
                # time upsampling: conv to 2x channels, then depth-to-time
                convs[i - 1] = CausalConv3d(prev, prev * 2, 3) if temporal_downsample[i - 1] else nn.Identity()
        self.block_res_blocks = nn.ModuleList(blocks)
        self.conv_blocks = nn.ModuleList(convs)
        self.norm1 = nn.GroupNorm(num_groups, prev)
        self.conv_out = CausalConv3d(prev, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.res_blocks:
            x = block(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                x = self.conv_blocks[i - 1](x)
                if self.temporal_downsample[i - 1]:
                    b, c2, t, h, w = x.shape  # channels are (C, 2) with the time offset fastest
                    x = x.view(b, c2 // 2, 2, t, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, c2 // 2, t * 2, h, w)
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    """The original's VAE_Temporal: causal 3D convs, 4x compression in time, none in space."""

    def __init__(self, in_out_channels: int = 4, latent_embed_dim: int = 4, embed_dim: int = 4, filters: int = 128,
                 num_res_blocks: int = 4, channel_multipliers=(1, 2, 2, 4), temporal_downsample=(False, True, True),
                 num_groups: int = 32):
        super().__init__()
        self.time_factor = 2 ** sum(bool(d) for d in temporal_downsample)
        levels = dict(filters=filters, num_res_blocks=num_res_blocks, channel_multipliers=channel_multipliers,
                      temporal_downsample=temporal_downsample, num_groups=num_groups)
        self.encoder = TemporalEncoder(in_out_channels, latent_embed_dim * 2, **levels)
        self.quant_conv = CausalConv3d(2 * latent_embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = CausalConv3d(embed_dim, latent_embed_dim, 1)
        self.decoder = TemporalDecoder(latent_embed_dim, in_out_channels, **levels)

    def front_padding(self, num_frames: int) -> int:
        return (-num_frames) % self.time_factor

    def latent_frames(self, num_frames: int) -> int:
        return (num_frames + self.front_padding(num_frames)) // self.time_factor

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, T, H, W) -> the posterior's mean and std, (B, C, T', H, W) each."""
        x = F.pad(x, (0, 0, 0, 0, self.front_padding(x.shape[2]), 0))
        mean, logvar = self.quant_conv(self.encoder(x)).to(x.dtype).chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, self.front_padding(num_frames):]


@dataclass
class OpenSoraVAEConfig:
    """config.json of hpcai-tech/OpenSora-VAE-v1.2 (VideoAutoencoderPipeline), plus the architecture of
    each part (None: the released SDXL / VAE_Temporal_SD sizes; the `tiny` preset sets small ones)."""

    architectures: list = field(default_factory=lambda: ["VideoAutoencoderPipeline"])
    model_type: str = "VideoAutoencoderPipeline"
    vae_2d: dict = field(default_factory=lambda: dict(
        type="VideoAutoencoderKL", from_pretrained="PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers", subfolder="vae",
        micro_batch_size=4, local_files_only=False))
    vae_temporal: dict = field(default_factory=lambda: dict(type="VAE_Temporal_SD", from_pretrained=None))
    from_pretrained: str | None = None
    freeze_vae_2d: bool = False
    cal_loss: bool = False
    micro_frame_size: int | None = 17
    shift: list = field(default_factory=lambda: [-0.10, 0.34, 0.27, 0.98])  # the release's latent statistics
    scale: list = field(default_factory=lambda: [3.85, 2.32, 2.33, 3.06])
    spatial_vae_config: dict | None = None  # diffusers AutoencoderKL kwargs; None: SDXL_VAE_CONFIG
    temporal_vae_config: dict | None = None  # TemporalVAE kwargs; None: TEMPORAL_VAE_CONFIG


def latent_frame_count(num_frames: int, chunk_frames: int = 17, time_factor: int = 4) -> int:
    """Latent frames of `num_frames` video frames: chunks of `chunk_frames`, each padded at the front to a multiple
    of `time_factor` (the release's geometry by default, which the request checks use without the weights)."""
    return sum(-(-min(chunk_frames, num_frames - i) // time_factor) for i in range(0, num_frames, chunk_frames))


class _SpatialVAE(nn.Module):
    """Holds the AutoencoderKL as `.module`, so keys read `spatial_vae.module.*` like the original."""

    def __init__(self, config: dict):
        super().__init__()
        from diffusers import AutoencoderKL

        self.module = AutoencoderKL(**config)


class OpenSoraVAE(PretrainedModel):
    config_class = OpenSoraVAEConfig
    class_name = "VideoAutoencoderPipeline"
    weights_name = "model.safetensors"  # what hpcai-tech/OpenSora-VAE-v1.2 ships
    spatial_factor = 8

    def __init__(self, config: OpenSoraVAEConfig):
        super().__init__()
        self.config = config
        self.spatial_vae = _SpatialVAE(config.spatial_vae_config or SDXL_VAE_CONFIG)
        self.temporal_vae = TemporalVAE(**(config.temporal_vae_config or TEMPORAL_VAE_CONFIG))
        self.micro_batch_size = (config.vae_2d or {}).get("micro_batch_size") or None
        self.register_buffer("scale", torch.tensor(config.scale, dtype=torch.float32)[None, :, None, None, None])
        self.register_buffer("shift", torch.tensor(config.shift, dtype=torch.float32)[None, :, None, None, None])

    @property
    def out_channels(self) -> int:
        return self.spatial_vae.module.config.latent_channels

    # ---- sizes ---------------------------------------------------------------------------------
    def chunks(self, num_frames: int) -> list[int]:
        """Frame counts of the chunks the temporal VAE sees (17, 17, ..., the rest)."""
        size = self.config.micro_frame_size or num_frames
        return [min(size, num_frames - i) for i in range(0, num_frames, size)]

    def latent_frames(self, num_frames: int) -> int:
        return latent_frame_count(num_frames, self.config.micro_frame_size or num_frames, self.temporal_vae.time_factor)

    def latent_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', h, w) of the latents of a (num_frames, height, width) video (the SDXL VAE floors odd sizes)."""
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
        f = self.spatial_factor
        if height < f or width < f:
            raise ValueError(f"height and width must be at least {f}, got {height}x{width}")
        return self.latent_frames(num_frames), height // f, width // f

    # ---- per frame (spatial) -------------------------------------------------------------------
    def _per_frame(self, x: torch.Tensor, fn) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        step = self.micro_batch_size or frames.shape[0]
        out = torch.cat([fn(frames[i:i + step]) for i in range(0, frames.shape[0], step)])
        return out.view(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)

    # ---- encode / decode -------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample_posterior: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) pixels in [-1, 1] -> (B, 4, T', H/8, W/8) normalised latents.

        Like the original, both posteriors are sampled unless `sample_posterior=False` (their means);
        pass a CPU `generator` for reproducible samples.
        """
        def draw(mean, std):
            if not sample_posterior:
                return mean
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
            return mean + std * noise.to(device=mean.device, dtype=mean.dtype)

        def spatial(frames):
            dist = self.spatial_vae.module.encode(frames).latent_dist
            return draw(dist.mean, dist.std) * SPATIAL_SCALE

        x_z = self._per_frame(x.to(self.dtype), spatial)
        z, start = [], 0
        for n in self.chunks(x_z.shape[2]):
            z.append(draw(*self.temporal_vae.encode(x_z[:, :, start:start + n])))
            start += n
        z = torch.cat(z, dim=2)
        return (z - self.shift.to(z.dtype)) / self.scale.to(z.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B, 4, T', h, w) normalised latents -> (B, 3, num_frames, 8h, 8w) pixels in about [-1, 1]."""
        chunks = self.chunks(num_frames)
        if z.shape[2] != self.latent_frames(num_frames):
            raise ValueError(f"{z.shape[2]} latent frames cannot decode to {num_frames} frames "
                             f"(that takes {self.latent_frames(num_frames)})")
        z = z.to(self.dtype) * self.scale.to(self.dtype) + self.shift.to(self.dtype)
        x_z, start = [], 0
        for n in chunks:
            size = self.temporal_vae.latent_frames(n)
            x_z.append(self.temporal_vae.decode(z[:, :, start:start + size], num_frames=n))
            start += size
        x_z = torch.cat(x_z, dim=2)
        return self._per_frame(x_z, lambda frames: self.spatial_vae.module.decode(frames / SPATIAL_SCALE).sample)
