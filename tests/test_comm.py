"""core/comm.py on two gloo processes: padding, splitting, gathering and all-to-all."""

import pytest
import torch

from distributed import run_distributed


def _collectives(rank, world):
    import torch.distributed as dist

    from videosys.core import comm

    group = dist.group.WORLD
    full = torch.arange(2 * 5 * 3 * 4, dtype=torch.float32).view(2, 5, 3, 4)  # (B, F=5, L=3, C)
    local = comm.split(full, 1, group)  # frames padded 5 -> 6, 3 each
    start, stop = comm.shard_range(5, world, rank)
    back = comm.gather(local, 1, group, size=5)
    # switch the sharded dim: (B, F/2, L, C) -> (B, F, L/2, C), L padded 3 -> 4, F cut back to 5
    switched = comm.all_to_all(local, group, scatter_dim=2, gather_dim=1, gather_size=5)
    lstart, lstop = comm.shard_range(3, world, rank)
    total = comm.all_reduce_sum(torch.tensor([float(rank + 1)]), group)
    return dict(local=local, range=(start, stop), back=back, switched=switched, lrange=(lstart, lstop), total=total)


@pytest.mark.slow
def test_split_gather_all_to_all_on_two_processes():
    full = torch.arange(2 * 5 * 3 * 4, dtype=torch.float32).view(2, 5, 3, 4)
    results = run_distributed(_collectives, 2)
    for rank, r in enumerate(results):
        start, stop = r["range"]
        assert (start, stop) == [(0, 3), (3, 5)][rank]
        assert r["local"].shape == (2, 3, 3, 4)
        assert torch.equal(r["local"][:, : stop - start], full[:, start:stop])
        assert torch.equal(r["local"][:, stop - start:], torch.zeros_like(r["local"][:, stop - start:]))  # padding
        assert torch.equal(r["back"], full)
        lstart, lstop = r["lrange"]
        assert r["switched"].shape == (2, 5, 2, 4)
        assert torch.equal(r["switched"][:, :, : lstop - lstart], full[:, :, lstart:lstop])
        assert float(r["total"]) == 3.0
