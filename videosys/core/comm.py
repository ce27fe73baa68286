"""Every collective the models use: split, gather, all-to-all and sum, with padding.

Pure functions over a tensor and a process group; a group of None (or of size 1) makes each
of them the identity, so single-process code runs the same lines. They run on gloo (CPU)
as on nccl, so CPU tests exercise the GPU code path. No autograd: inference only.

Padding: a dimension that does not divide by the group size is zero-padded to the next
multiple before it is scattered; the caller passes the true size of a dimension that is
gathered back, and the padding is cut off there.
"""

import torch
import torch.distributed as dist


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def padded_size(size: int, parts: int) -> int:
    return -(-size // parts) * parts


def pad_dim(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Zero-pad `dim` of x up to `size`."""
    missing = size - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def shard_range(size: int, parts: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the real (unpadded) elements that `rank` holds after split()."""
    chunk = padded_size(size, parts) // parts
    return min(rank * chunk, size), min((rank + 1) * chunk, size)


def split(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's chunk of `dim` (padded to a multiple of the group size first)."""
    return shard(x, dim, group_size(group), group_rank(group))


def shard(x: torch.Tensor, dim: int, parts: int, rank: int) -> torch.Tensor:
    """Chunk `rank` of `parts` along `dim` (padded to a multiple of `parts` first): split without a group."""
    if parts == 1:
        return x
    x = pad_dim(x, dim, padded_size(x.shape[dim], parts))
    return x.chunk(parts, dim=dim)[rank].contiguous()


def gather(x: torch.Tensor, dim: int, group, size: int | None = None) -> torch.Tensor:
    """Concatenate every rank's chunk along `dim`, then cut the padding back to `size`."""
    parts = group_size(group)
    if parts == 1:
        return x if size is None else x.narrow(dim, 0, size)
    chunks = [torch.empty_like(x) for _ in range(parts)]
    dist.all_gather(chunks, x.contiguous(), group=group)
    out = torch.cat(chunks, dim=dim)
    return out if size is None else out.narrow(dim, 0, size)


def all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int, gather_size: int | None = None):
    """Switch which dimension is sharded: scatter `scatter_dim`, gather `gather_dim`.

    e.g. (B, F/sp, L, C) -> (B, F, L/sp, C) with scatter_dim=2, gather_dim=1, gather_size=F.
    """
    parts = group_size(group)
    if parts == 1:
        return x if gather_size is None else x.narrow(gather_dim, 0, gather_size)
    x = pad_dim(x, scatter_dim, padded_size(x.shape[scatter_dim], parts))
    inputs = [c.contiguous() for c in x.chunk(parts, dim=scatter_dim)]
    outputs = [torch.empty_like(inputs[0]) for _ in range(parts)]
    dist.all_to_all(outputs, inputs, group=group)
    out = torch.cat(outputs, dim=gather_dim)
    return out if gather_size is None else out.narrow(gather_dim, 0, gather_size)


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    if group_size(group) == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
    return x
