"""adaLN-single (PixArt-alpha, arXiv 2310.00426): per-block tables added to one shared timestep vector.

Latte, Open-Sora (STDiT3) and Open-Sora-Plan v1.2 modulate every block and the final layer this way:
a learned `scale_shift_table` (K, C) plus the timestep embedding gives K vectors (shift, scale, gate, ...).
"""

import torch


def modulation(table: torch.Tensor, emb: torch.Tensor, token_dims: int) -> tuple[torch.Tensor, ...]:
    """table (K, C) + emb (B, K * C), or (B, C) shared by all K -> K tensors (B, 1 x token_dims, C).

    `token_dims` ones broadcast over the tokens: 1 for (B, N, C) activations, 2 for (B, T, S, C).
    """
    b, k = emb.shape[0], table.shape[0]
    mod = table[None] + emb.view(b, -1, table.shape[1])  # (B, K, C)
    return mod.view(b, k, *([1] * token_dims), -1).unbind(1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift (PixArt's t2i_modulate)."""
    return x * (1 + scale) + shift
