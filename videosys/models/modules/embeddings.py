"""Embeddings shared by the families: timestep, sinusoidal positions, patches, captions.

Parameter names follow diffusers' layout so the official checkpoints load unchanged.
"""

import functools
import math

import torch
from torch import nn


_TABLES: dict = {}


def constant_table(build):
    """A position table builder of Python numbers and strings (grid, scales, the device's name, a dtype) made a
    table lookup: built once per process and argument set (the oldest of 64 dropped: a long-lived server seeing
    many grids), shared, never written to. Under torch.compile the call is not traced: dynamo guards on the
    arguments and takes the table as a constant of the graph (a cache lookup traced in the graph made the
    whole-forward compile compile again at its second call, once the key was found). Dynamo names the constant
    after the function, so each table may be looked up once per compiled graph."""

    def table(*args):
        key = (build, *args)
        if key not in _TABLES:
            if len(_TABLES) >= 64:
                _TABLES.pop(next(iter(_TABLES)))
            _TABLES[key] = build(*args)
        return _TABLES[key]

    table.__code__ = table.__code__.replace(co_name=build.__name__)  # the constant's name: one per table
    return torch.compiler.assume_constant_result(functools.wraps(build)(table))


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) in fp32 (DDPM / diffusers `Timesteps`)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t[:, None].float() * torch.exp(exponent)[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) [sin | cos] embedding, computed in fp64 (MAE / DiT convention)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0))
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_grid(dim: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(H,) row and (W,) column positions -> (H * W, dim) fp32 table in row-major token order; the first
    half encodes the column, the second the row (PixArt / diffusers / Open-Sora order)."""
    row, col = torch.meshgrid(rows, cols, indexing="ij")  # (H, W) each
    return torch.cat([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], dim=1).float()


def sincos_2d(dim: int, height: int, width: int, base_size: int, interpolation_scale: float = 1.0) -> torch.Tensor:
    """(height * width, dim) embedding in row-major token order (sincos_grid); positions are rescaled so
    that a grid of `base_size` spans 0..base_size whatever its real size."""
    rows = torch.arange(height, dtype=torch.float32) / (height / base_size) / interpolation_scale
    cols = torch.arange(width, dtype=torch.float32) / (width / base_size) / interpolation_scale
    return sincos_grid(dim, rows, cols)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear on the sinusoidal timestep embedding (keys linear_1, linear_2)."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class TimestepEmbedder(nn.Module):
    """PixArt / DiT's: the [cos | sin] sinusoidal embedding (256 channels) -> Linear -> SiLU -> Linear, with the
    original key names mlp.0 / mlp.2 (Open-Sora's STDiT3, CascadeV's DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim, flip_sin_to_cos=True).to(dtype))


class _TimestepEmbedder(nn.Module):
    """Holds `timestep_embedder` so keys read `adaln_single.emb.timestep_embedder.*`."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.timestep_embedder = TimestepEmbedding(freq_dim, dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(timestep_embedding(t, self.freq_dim).to(dtype))


class AdaLNSingle(nn.Module):
    """PixArt-alpha adaLN-single: one timestep MLP shared by every block.

    Returns the 6 * dim modulation vector (shift/scale/gate for attention and MLP) and the
    timestep embedding itself (used by the final layer).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.emb = _TimestepEmbedder(dim)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.emb(t, dtype)  # (B, C)
        return self.linear(self.silu(emb)), emb


class CaptionProjection(nn.Module):
    """Text-encoder features -> model width: Linear -> GELU(tanh) -> Linear."""

    def __init__(self, in_features: int, hidden_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


@constant_table
def patch_pos_table(dim: int, height: int, width: int, base_size: int, interpolation_scale: float,
                    device: str) -> torch.Tensor:
    return sincos_2d(dim, height, width, base_size, interpolation_scale)[None].to(device)


class PatchEmbed2D(nn.Module):
    """(N, C, H, W) -> (N, H/p * W/p, dim) tokens plus the fixed 2D sin-cos position embedding.

    The position table is a pure function of the grid, so it is built once per (grid, device)
    (`constant_table`) instead of every denoising step.
    """

    def __init__(self, patch_size: int, in_channels: int, dim: int, base_size: int, interpolation_scale: float = 1.0):
        super().__init__()
        self.patch_size = patch_size
        self.base_size = base_size
        self.interpolation_scale = interpolation_scale
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def pos_embed(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(1, height * width, dim) fp32."""
        return patch_pos_table(self.proj.out_channels, height, width, self.base_size, self.interpolation_scale,
                               str(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.proj(x).flatten(2).transpose(1, 2)  # (N, h*w, C)
        return (x + self.pos_embed(h, w, x.device)).to(x.dtype)


def sincos_3d(dim: int, frames: int, height: int, width: int, spatial_scale: float = 1.0,
              temporal_scale: float = 1.0) -> torch.Tensor:
    """(frames * height * width, dim) fixed 3D embedding in (T, H, W) row-major token order.

    Channels: [frame (dim/4) | column (3dim/8) | row (3dim/8)] (CogVideoX / diffusers order);
    positions are divided by the interpolation scales, with no rescaling to a base grid.
    """
    if dim % 16:
        raise ValueError(f"3D sin-cos embedding needs dim divisible by 16, got {dim}")
    spatial = 3 * dim // 4
    rows = torch.arange(height, dtype=torch.float32) / spatial_scale
    cols = torch.arange(width, dtype=torch.float32) / spatial_scale
    row, col = torch.meshgrid(rows, cols, indexing="ij")  # (H, W) each
    space = torch.cat([sincos_1d(spatial // 2, col), sincos_1d(spatial // 2, row)], dim=1)  # (H*W, 3dim/4)
    time = sincos_1d(dim // 4, torch.arange(frames, dtype=torch.float32) / temporal_scale)  # (T, dim/4)
    table = torch.cat([time[:, None].expand(-1, height * width, -1), space[None].expand(frames, -1, -1)], dim=-1)
    return table.reshape(frames * height * width, dim).float()
