"""VideoSysEngine: the one-call API, on one process or many.

    engine = VideoSysEngine(LatteConfig(preset="tiny"))
    out = engine.generate("a red circle moving to the right", seed=0)
    engine.save_video(out.video[0], "out.mp4")

With `num_gpus=N` the caller is rank 0 and the engine spawns ranks 1..N-1; every rank
builds the same pipeline from the config and runs every call, and rank 0 returns the
result. Under `torchrun` the engine uses the processes torchrun made instead (every rank
runs the script; only rank 0 writes files). CUDA ranks use nccl, one GPU each; CPU ranks
use gloo. A worker that fails or dies ends the call with an error naming its rank.
"""

import dataclasses
import datetime
import os
import queue
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from videosys.core.parallel import ParallelState, init_parallel
from videosys.core.pipeline import VideoSysOutput
from videosys.utils.video import save_video

_TIMEOUT = datetime.timedelta(minutes=30)


class WorkerError(RuntimeError):
    pass


class Cancelled(Exception):
    """Raised by a generate(progress=...) callback to stop that generation after the current step."""


class _StepSync:
    """The step callback of every rank when several processes run: after each step rank 0 calls the
    caller's `progress` and broadcasts whether to stop, so every rank leaves the loop at the same step
    and none is left inside a collective (one small broadcast and host sync per step)."""

    def __init__(self, progress, device: torch.device):
        self.progress, self.device = progress, device

    def __call__(self, done: int, total: int) -> None:
        error = None
        if self.progress is not None:  # rank 0
            try:
                self.progress(done, total)
            except BaseException as err:
                error = err
        stop = torch.tensor([error is not None], dtype=torch.int32, device=self.device)
        dist.broadcast(stop, src=0)
        if error is not None:
            raise error
        if stop.item():
            raise Cancelled(f"stopped after step {done}/{total} by rank 0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_config(config, rank: int, local_rank: int | None = None):
    """The config a rank builds from: its own GPU, and one progress bar (rank 0's)."""
    changes = {"progress_bar": config.progress_bar and rank == 0}
    if config.torch_device().type == "cuda":
        changes["device"] = f"cuda:{(rank if local_rank is None else local_rank) % torch.cuda.device_count()}"
    return dataclasses.replace(config, **changes)


def _init_process_group(rank: int, world: int, device_type: str, local_rank: int | None = None) -> None:
    if device_type == "cuda":
        torch.cuda.set_device((rank if local_rank is None else local_rank) % torch.cuda.device_count())
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world,
                            timeout=_TIMEOUT)


def _build(config, rank: int, local_rank: int | None = None):
    config = _rank_config(config, rank, local_rank)
    pipeline = config.pipeline_cls.from_config(config)
    pipeline.set_parallel(init_parallel(config.cfg_parallel, config.torch_device().type))
    return pipeline


def _worker(rank: int, world: int, port: int, config, commands, results) -> None:
    """Ranks 1..N-1: build the pipeline, then run what rank 0 runs, call for call."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if config.torch_device().type == "cpu":  # N processes share the cores: don't oversubscribe them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        _init_process_group(rank, world, config.torch_device().type)
        pipeline = _build(config, rank)
        results.put((rank, "ready", None))
        while True:
            command = commands.get()
            if command is None:
                break
            method, args, kwargs, step_sync = command
            pipeline.step_callback = step_sync
            try:
                getattr(pipeline, method)(*args, **kwargs)
            except Cancelled:  # every rank stopped at the same step boundary: nothing is mid-collective
                pass
            results.put((rank, "done", None))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
        # leaving the process group at once makes the other ranks' collectives fail fast instead of hanging
        os._exit(1)
    dist.destroy_process_group()


class VideoSysEngine:
    def __init__(self, config):
        self.config = config
        self.workers: list = []
        self.commands: list = []
        self.rank, self.world = 0, 1
        if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            self._init_torchrun()
        elif config.num_gpus > 1:
            self._spawn_workers()
        else:
            self.pipeline = config.pipeline_cls.from_config(config)

    # ---- process set-up ------------------------------------------------------------------
    def _init_torchrun(self) -> None:
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", self.rank))  # the GPU on this node; RANK is global
        if not dist.is_initialized():
            _init_process_group(self.rank, self.world, self.config.torch_device().type, local_rank)
        self.pipeline = _build(self.config, self.rank, local_rank)

    def _spawn_workers(self) -> None:
        self.world = self.config.num_gpus
        device_type = self.config.torch_device().type
        if device_type == "cuda" and torch.cuda.device_count() < self.world:
            raise ValueError(f"num_gpus={self.world} but only {torch.cuda.device_count()} CUDA devices are visible")
        port = _free_port()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        for rank in range(1, self.world):
            commands = ctx.Queue()
            process = ctx.Process(target=_worker, args=(rank, self.world, port, self.config, commands, self.results),
                                  daemon=True, name=f"videosys-rank{rank}")
            process.start()
            self.workers.append(process)
            self.commands.append(commands)
        try:
            _init_process_group(0, self.world, device_type)
            self.pipeline = _build(self.config, 0)
            self._collect("ready")
        except BaseException as err:
            self.shutdown()
            raise self._worker_failure() or err

    def _collect(self, status: str) -> None:
        """Wait for every worker to report `status`; a worker error or death raises, naming the rank."""
        pending = set(range(1, self.world))
        while pending:
            try:
                rank, got, detail = self.results.get(timeout=0.5)
            except queue.Empty:
                failure = self._worker_failure()
                if failure:
                    raise failure
                continue
            if got == "error":
                raise WorkerError(f"rank {rank} failed:\n{detail}")
            pending.discard(rank)

    def _worker_failure(self) -> WorkerError | None:
        for rank, process in enumerate(self.workers, start=1):
            if not process.is_alive() and process.exitcode not in (0, None):
                detail = ""
                try:
                    while True:
                        r, got, text = self.results.get_nowait()
                        if got == "error" and r == rank:
                            detail = f":\n{text}"
                except (queue.Empty, OSError, ValueError):
                    pass
                return WorkerError(f"rank {rank} died (exit code {process.exitcode}){detail}")
        return None

    # ---- running calls on every rank -------------------------------------------------------
    def _run(self, method: str, *args, progress=None, **kwargs):
        if self.pipeline is None:
            raise RuntimeError("this engine was shut down")
        if not self.workers:
            self.pipeline.step_callback = progress
            try:
                return getattr(self.pipeline, method)(*args, **kwargs)
            finally:
                self.pipeline.step_callback = None
        step_sync = _StepSync(None, self.pipeline.device) if progress is not None else None
        for commands in self.commands:
            commands.put((method, args, kwargs, step_sync))
        self.pipeline.step_callback = _StepSync(progress, self.pipeline.device) if progress is not None else None
        try:
            result = getattr(self.pipeline, method)(*args, **kwargs)
            self._collect("done")
        except Cancelled:
            self._collect("done")  # the workers stopped at the same step; the engine stays usable
            raise
        except BaseException as err:
            failure = self._wait_for_failure()
            self.shutdown()
            raise (failure or err) from err
        finally:
            if self.pipeline is not None:
                self.pipeline.step_callback = None
        return result

    def _wait_for_failure(self, seconds: float = 5.0) -> WorkerError | None:
        """After rank 0 failed in a collective, give a dying worker a moment to be seen."""
        import time

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            failure = self._worker_failure()
            if failure:
                return failure
            time.sleep(0.1)
        return None

    def generate(self, prompt, progress=None, **kwargs) -> VideoSysOutput:
        """`progress(steps_done, total)`, if given, runs in the caller's process after each denoising step;
        raising Cancelled from it stops the generation there (on every rank) and the engine stays usable.
        Under torchrun each rank calls its own `progress`: they must all stop at the same step."""
        return self._run("generate", prompt, progress=progress, **kwargs)

    def reconstruct(self, video, **kwargs):
        """Video autoencoders (CascadeV): encode `video` (a path or (T, H, W, 3) uint8 frames) and decode it."""
        return self._run("reconstruct", video, **kwargs)

    def set_cache(self, cache) -> None:
        """Switch caches on every rank without reloading weights: a registered name ("teacache-slow", "pab",
        "none": videosys.cache.choices()), a method's config, a {"method": ...} dict, or a list."""
        self._run("set_cache", cache)

    def save_video(self, video, path: str, fps: int | None = None) -> str:
        """Write the video (rank 0 only; other ranks of a torchrun job return the path unwritten)."""
        if self.rank != 0:
            return path
        return save_video(video, path, fps=fps or self.config.fps)

    def shutdown(self) -> None:
        """Stop the workers and leave the process group; safe to call twice."""
        for commands in self.commands:
            try:
                commands.put(None)
            except (OSError, ValueError):
                pass
        for process in self.workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        spawned = bool(self.workers)
        self.workers, self.commands = [], []
        if spawned and dist.is_initialized():
            dist.destroy_process_group()
        self.pipeline = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def __del__(self):
        if getattr(self, "workers", None):
            self.shutdown()


__all__ = ["VideoSysEngine", "WorkerError", "Cancelled", "ParallelState"]
