"""Rotary position embedding (RoPE): the interleaved-pair form, and (at the end) the split-half form.

Channel pairs (2i, 2i + 1) of a query or key are rotated together by the angle pos * theta^(-2i/d)
(RoFormer; the layout of rotary_embedding_torch, GPT-J and diffusers' `use_real_unbind_dim=-1`).
Tables are (cos, sin), each (L, d) with every angle repeated for its pair, so applying them is two
multiply-adds. A 3D table concatenates per-axis tables along the channels.
"""

import torch


def rope_1d(dim: int, pos: torch.Tensor, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) positions -> cos, sin tables (M, dim) in fp32."""
    if dim % 2:
        raise ValueError(f"rotary embedding needs an even dim, got {dim}")
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)  # (dim/2,)
    angles = torch.outer(pos.float(), freqs)  # (M, dim/2)
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def rope_3d(dims: tuple[int, int, int], pos_t: torch.Tensor, pos_h: torch.Tensor, pos_w: torch.Tensor,
            theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables for a (T, H, W) grid in row-major token order: channels [t | h | w] of sizes `dims`.

    Returns cos, sin, each (T * H * W, sum(dims)).
    """
    t, h, w = len(pos_t), len(pos_h), len(pos_w)
    out = []
    for tables in zip(rope_1d(dims[0], pos_t, theta), rope_1d(dims[1], pos_h, theta), rope_1d(dims[2], pos_w, theta)):
        tt, hh, ww = tables  # (T, dt), (H, dh), (W, dw)
        grid = torch.cat([tt[:, None, None].expand(t, h, w, -1), hh[None, :, None].expand(t, h, w, -1),
                          ww[None, None, :].expand(t, h, w, -1)], dim=-1)  # (T, H, W, d)
        out.append(grid.reshape(t * h * w, -1))
    return out[0], out[1]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., L, d) queries or keys by (L, d) tables, returned in x's dtype.

    Computed in the tables' dtype: fp32 tables give fp32 maths (CogVideoX); tables in the model's dtype
    give the release's (Open-Sora: rotary_embedding_torch, x * cos + rotate(x) * sin all in that dtype)."""
    real, imag = x.unflatten(-1, (-1, 2)).unbind(-1)  # (..., L, d/2) each
    rotated = torch.stack([-imag, real], dim=-1).flatten(-2)  # (..., L, d): the pair turned by 90 degrees
    return (x.to(cos.dtype) * cos + rotated.to(cos.dtype) * sin).to(x.dtype)


# ---- split-half layout ----------------------------------------------------------------------------
# The other common layout (GPT-NeoX, LLaMA, Open-Sora-Plan's RoPE3D): a head dim of d rotates
# channel i with channel i + d/2 ("rotate_half"). A 3D table splits the head dim into equal parts
# for t, h, w and applies this layout inside each part.


def rope_1d_halves(dim: int, pos: torch.Tensor, theta: float = 10000.0,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) positions (may be fractional) -> cos, sin tables (M, dim) in `dtype`, angles laid out [f | f].

    The angles are computed in fp32 and rounded to `dtype` before cos / sin, which are then taken in
    `dtype`: the order of Open-Sora-Plan v1.2's RoPE3D.get_cos_sin (einsum in fp32, `.to(dtype)`, cos).
    """
    if dim % 2:
        raise ValueError(f"rotary embedding needs an even dim, got {dim}")
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)  # (dim/2,)
    angles = torch.outer(pos.float(), freqs).to(dtype)  # (M, dim/2)
    angles = torch.cat([angles, angles], dim=1)
    return angles.cos(), angles.sin()


def rope_3d_halves(part_dim: int, pos_t: torch.Tensor, pos_h: torch.Tensor, pos_w: torch.Tensor,
                   theta: float = 10000.0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables for a (T, H, W) grid in row-major token order, head dim = 3 parts [t | h | w] of `part_dim`.

    Returns cos, sin, each (T * H * W, 3 * part_dim) in `dtype`; apply with
    `apply_rope_halves(x, cos, sin, parts=3)`.
    """
    t, h, w = len(pos_t), len(pos_h), len(pos_w)
    out = []
    for tt, hh, ww in zip(*(rope_1d_halves(part_dim, pos, theta, dtype) for pos in (pos_t, pos_h, pos_w))):
        grid = torch.cat([tt[:, None, None].expand(t, h, w, -1), hh[None, :, None].expand(t, h, w, -1),
                          ww[None, None, :].expand(t, h, w, -1)], dim=-1)  # (T, H, W, 3 * part_dim)
        out.append(grid.reshape(t * h * w, -1))
    return out[0], out[1]


def apply_rope_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """Rotate (..., L, d) by (L, d) tables, rotate_half within each of `parts` equal channel parts.

    Computed in the tables' dtype and returned in x's: fp32 tables give fp32 maths; tables in the
    model's dtype give the release's (x * cos + rotate_half(x) * sin, all in that dtype)."""
    halves = x.unflatten(-1, (parts, 2, -1))  # (..., L, parts, 2, d / parts / 2)
    rotated = torch.stack([-halves[..., 1, :], halves[..., 0, :]], dim=-2).flatten(-3)  # (..., L, d)
    return (x.to(cos.dtype) * cos + rotated.to(cos.dtype) * sin).to(x.dtype)
