"""Run a function on N spawned CPU processes joined by gloo; collect what each rank returns."""

import os
import socket

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args, results):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world: int, *args):
    """fn(rank, world, *args) on `world` processes; returns the list of their results."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_entry, args=(world, free_port(), fn, args, results), nprocs=world, start_method="spawn")
        return [results[r] for r in range(world)]


def generate_per_cache(runner, caches, prompt: str, **run) -> dict:
    """{cache: output} of an engine or pipeline, switching caches between runs (no weight reloads)."""
    out = {}
    for cache in caches:
        runner.set_cache(cache)
        out[cache] = runner.generate(prompt, **run)
    return out


def assert_same_as_single(out, ref, label: str = "") -> None:
    """A parallel run against the single-process one: latents within 1e-4 of their scale (the random
    tiny models' latents reach ~100, where differently batched fp32 matmuls alone differ by ~1e-5),
    frames within one uint8 level, and the very same cache decisions."""
    scale = max(1.0, float(ref.latents.abs().max()))
    assert (out.latents - ref.latents).abs().max() <= 1e-4 * scale, label
    assert (out.video.float() - ref.video.float()).abs().max() <= 1.0, label
    for key in ("teacache", "pab", "skipcache"):
        assert out.stats.get(key) == ref.stats.get(key), label


def _explode(message: str):
    raise RuntimeError(message)


class SeedLostInTransit(int):
    """A seed rank 0 uses as the int it is, but whose unpickling (in a worker, from the command queue) raises."""

    def __reduce__(self):
        return _explode, ("this seed cannot reach the worker",)


class SeedEveryRankRefuses(int):
    """A seed that passes the engine's checks (an int by type) and reaches every rank as itself, where int() raises:
    a failure on every rank after dispatch."""

    def __int__(self):
        raise ValueError("every rank's failure")


class SeedRank0Refuses(int):
    """A seed that passes the engine's checks and reaches the workers as 1, but that rank 0 itself cannot use
    (int() raises)."""

    def __new__(cls):
        return super().__new__(cls, 1)

    def __int__(self):
        raise RuntimeError("rank 0's own failure")

    def __reduce__(self):
        return int, (1,)
