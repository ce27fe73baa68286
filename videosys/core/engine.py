"""VideoSysEngine: the one-call API, on one process or many.

    engine = VideoSysEngine(LatteConfig(preset="tiny"))
    out = engine.generate("a red circle moving to the right", seed=0)
    engine.save_video(out.video[0], "out.mp4")

With `num_gpus=N` the caller is rank 0 and the engine spawns ranks 1..N-1; every rank
builds the same pipeline from the config and runs every call, and rank 0 returns the
result. Under `torchrun` the engine uses the processes torchrun made instead (every rank
runs the script; only rank 0 writes files). CUDA ranks use nccl, one GPU each; CPU ranks
use gloo. A worker that fails or dies ends the call with an error naming its rank and carrying
its traceback; one that stops responding (no heartbeat for `config.heartbeat_timeout` s) is
killed and named the same way; workers exit by themselves when rank 0 dies. One multi-process
engine per process at a time (torch has one default process group).
"""

import contextlib
import dataclasses
import datetime
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tqdm.auto import tqdm

from videosys.core.config import available_cores, check_call
from videosys.core.memory import check_fits
from videosys.core.parallel import ParallelState, init_parallel
from videosys.core.pipeline import VideoSysOutput
from videosys.utils.video import save_video

_TIMEOUT = datetime.timedelta(minutes=30)  # the process group's own; the heartbeat ends a hung call long before
# Set in every spawned worker: an engine built there means the user's script re-ran on import (no __main__ guard).
_WORKER_ENV = "VIDEOSYS_WORKER_RANK"
_EXIT_UNGUARDED, _EXIT_ORPHANED = 86, 87  # worker exit codes rank 0 can name
_FAILURE_GRACE_S = 1.0  # after rank 0 fails: how long a dying worker has to be seen (it dies within ms)
_UNGUARDED = ("the script that builds the VideoSysEngine re-ran in a spawned worker: a spawned process imports "
              "the main script again, so everything at its top level runs once per worker. Put the script's "
              "work under `if __name__ == \"__main__\":` (see docs/parallel.md)")


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


def build_pipeline(config):
    """The family's pipeline with the config's memory settings applied (offload, weight quantization:
    core/offload.py), the one place every family's pipeline gets them."""
    from videosys.core.offload import apply_memory_settings, build_config

    return apply_memory_settings(config.pipeline_cls.from_config(build_config(config)), config)


def _build(config, rank: int, local_rank: int | None = None):
    config = _rank_config(config, rank, local_rank)
    pipeline = build_pipeline(config)
    pipeline.set_parallel(init_parallel(config.cfg_parallel, config.torch_device().type))
    return pipeline


def _heartbeat(rank: int, parent_pid: int, beats, interval: float) -> None:
    """A worker's daemon thread: stamp the shared heartbeat, and exit the moment rank 0 is gone.

    The worker holds the command queue's write end itself, so a blocking get() never sees rank 0 die;
    a re-parented process (os.getppid() changes) does. Stopped with the worker (SIGSTOP), the stamps stop:
    that is what rank 0 watches for.
    """
    while True:
        if os.getppid() != parent_pid:
            os._exit(_EXIT_ORPHANED)
        beats[rank] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
        time.sleep(interval)


def _worker(rank: int, world: int, port: int, config, commands, results, beats, parent_pid: int) -> None:
    """Ranks 1..N-1: build the pipeline, then run what rank 0 runs, call for call."""
    # Ctrl-C reaches every process of the terminal: rank 0 alone answers it (it shuts the workers down), so the
    # user sees one line, not a traceback per rank (started with SIGINT ignored too: _spawn_workers)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore: a worker that is killed or leaves by os._exit never
    # releases it, and the resource tracker then reports "leaked semaphore objects" at the end of the run
    tqdm.set_lock(threading.RLock())
    # diffusers imports torchao (~2 s) on the first model load wherever it is installed, for its own TorchAoConfig
    # loading path, which a worker never takes (quantize="int8" calls torchao itself: core/offload.py); every rank
    # of every engine paid it. Only in our own worker processes: a user's process keeps diffusers as it is.
    from diffusers.utils import import_utils

    import_utils._torchao_available = False
    threading.Thread(target=_heartbeat, args=(rank, parent_pid, beats, min(0.5, config.heartbeat_timeout / 4)),
                     daemon=True, name="videosys-heartbeat").start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if config.torch_device().type == "cpu":  # N processes share the cores: don't oversubscribe them
        torch.set_num_threads(max(1, available_cores() // world))
    try:
        results.put((rank, "alive", None))
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
        # the queue writes from a feeder thread: flush it, or os._exit drops the traceback
        results.close()
        results.join_thread()
        # leaving the process group at once makes the other ranks' collectives fail fast instead of hanging
        os._exit(1)
    dist.destroy_process_group()


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in this process while the block runs (main thread only: signal handlers live there); a
    process started meanwhile begins with it ignored, as Python leaves an ignored SIGINT ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Watchdog:
    """Rank 0's thread while a call runs: a worker whose heartbeat is older than `timeout` (stopped, hung)
    is killed, which makes rank 0's blocked collective fail at once (on nccl the group is aborted too);
    the failure names the rank."""

    def __init__(self, workers, beats, timeout: float, device_type: str):
        self.workers, self.beats, self.timeout, self.device_type = workers, beats, timeout, device_type
        self.failure: WorkerError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="videosys-watchdog")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(min(0.2, self.timeout / 4)):
            now = time.monotonic()
            for rank, process in enumerate(self.workers, start=1):
                silent = now - self.beats[rank]
                if process.is_alive() and silent > self.timeout:
                    self.failure = WorkerError(
                        f"rank {rank} stopped responding: no heartbeat for {silent:.1f} s (heartbeat_timeout="
                        f"{self.timeout} s; the process was stopped, hung or starved), so it was killed and the "
                        "call ended")
                    process.kill()
                    if self.device_type == "cuda":  # nccl does not notice a dead peer by itself
                        try:
                            dist.distributed_c10d._abort_process_group()
                        except Exception:
                            pass
                    return


class VideoSysEngine:
    def __init__(self, config):
        if os.environ.get(_WORKER_ENV):  # we are a worker re-importing the user's script: stop it here
            print(f"videosys: error (rank {os.environ[_WORKER_ENV]}): {_UNGUARDED}", flush=True,
                  file=sys.stderr)
            os._exit(_EXIT_UNGUARDED)
        # the config's own size against the memory here (the frames and latents: no weights needed), before any
        # process starts or weight loads; a call's own size is checked again with the transformer's widths
        check_fits(config, {name: getattr(config, name, None) for name in ("num_frames", "height", "width")})
        self.memory_plan = None  # with config.vram: the planner's choice (core/planner.py), applied to the config
        if config.vram is not None:
            from videosys.core.planner import apply_plan

            config, self.memory_plan = apply_plan(config)  # refuses before any weight loads when nothing fits
            print(f"videosys: {self.memory_plan.summary()}", file=sys.stderr)
        self.config = config
        self.workers: list = []
        self.commands: list = []
        self.pipeline = None
        self.rank, self.world = 0, 1
        if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            config.check_launch(int(os.environ["WORLD_SIZE"]), spawning=False)
            self._init_torchrun()
        elif config.num_gpus > 1:
            config.check_launch(config.num_gpus, spawning=True)
            self._spawn_workers()
        else:
            config.torch_device()  # a missing GPU is an error before any weight loads
            self.pipeline = build_pipeline(config)

    # ---- process set-up ------------------------------------------------------------------
    def _init_torchrun(self) -> None:
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", self.rank))  # the GPU on this node; RANK is global
        if not dist.is_initialized():
            _init_process_group(self.rank, self.world, self.config.torch_device().type, local_rank)
        self.pipeline = _build(self.config, self.rank, local_rank)

    def _spawn_workers(self) -> None:
        if dist.is_initialized():  # torch has one default group per process; a second engine would replace it
            raise RuntimeError("a multi-process VideoSysEngine (or another torch.distributed process group) is "
                               "already running in this process; shut it down first (engine.shutdown() or a "
                               "`with` block), or reuse it: engine.set_cache() switches caches without reloading")
        self.world = self.config.num_gpus
        device_type = self.config.torch_device().type
        if device_type == "cuda" and torch.cuda.device_count() < self.world:
            raise ValueError(f"num_gpus={self.world} but only {torch.cuda.device_count()} CUDA devices are visible")
        port = _free_port()
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        ctx = mp.get_context("spawn")
        self.results = ctx.Queue()
        self.beats = ctx.RawArray("d", self.world)  # each worker's last heartbeat (time.monotonic())
        try:
            for rank in range(1, self.world):
                commands = ctx.Queue()
                process = ctx.Process(target=_worker, args=(rank, self.world, port, self.config, commands,
                                                            self.results, self.beats, os.getpid()),
                                      daemon=True, name=f"videosys-rank{rank}")
                os.environ[_WORKER_ENV] = str(rank)  # the child's environment is copied at start
                try:
                    with _sigint_ignored():  # inherited: a Ctrl-C while the worker imports is not its traceback
                        process.start()
                finally:
                    del os.environ[_WORKER_ENV]
                self.workers.append(process)
                self.commands.append(commands)
            self._collect("alive")  # a worker that dies while starting would leave rank 0 waiting for it below
            _init_process_group(0, self.world, device_type)
            self.pipeline = _build(self.config, 0)
            self._collect("ready")
        except BaseException as err:
            failure = None if isinstance(err, (KeyboardInterrupt, WorkerError)) else self._wait_for_failure()
            self.shutdown(timeout=0.5)
            if failure is None:
                raise
            raise failure from err

    def _collect(self, status: str, watchdog: "_Watchdog | None" = None) -> None:
        """Wait for every worker to report `status`; a worker error, death or stall raises, naming the rank."""
        pending = set(range(1, self.world))
        while pending:
            try:
                rank, got, detail = self.results.get(timeout=0.1)
            except queue.Empty:
                failure = self._worker_failure(watchdog)
                if failure:
                    raise failure
                continue
            if got == "error":
                raise WorkerError(f"rank {rank} failed:\n{detail}")
            if got == status:
                pending.discard(rank)

    def _worker_failure(self, watchdog: "_Watchdog | None" = None) -> WorkerError | None:
        if watchdog is not None and watchdog.failure is not None:
            return watchdog.failure
        for rank, process in enumerate(self.workers, start=1):
            if not process.is_alive() and process.exitcode not in (0, None):
                if process.exitcode == _EXIT_UNGUARDED:
                    return WorkerError(f"rank {rank} stopped: {_UNGUARDED}")
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
        watchdog = _Watchdog(self.workers, self.beats, self.config.heartbeat_timeout, self.config.torch_device().type)
        try:
            with watchdog:
                try:
                    result = getattr(self.pipeline, method)(*args, **kwargs)
                except Cancelled:
                    self._collect("done", watchdog)  # the workers stopped at the same step; the engine stays usable
                    raise
                self._collect("done", watchdog)
        except Cancelled:
            raise
        except BaseException as err:
            # Ctrl-C reaches every process of the terminal: the workers' deaths are its echo, not the cause
            failure = (None if isinstance(err, (KeyboardInterrupt, WorkerError))
                       else self._wait_for_failure(watchdog=watchdog))
            self.shutdown(timeout=0.5)  # workers still inside the call wait on rank 0's collectives: no use waiting
            if failure is None:
                raise
            raise failure from err
        finally:
            if self.pipeline is not None:
                self.pipeline.step_callback = None
        return result

    def _wait_for_failure(self, seconds: float = _FAILURE_GRACE_S, watchdog: "_Watchdog | None" = None):
        """After rank 0 failed (a collective broke, or its own error): give a dying worker a moment to be seen."""
        end = time.monotonic() + seconds
        while True:
            failure = self._worker_failure(watchdog)
            if failure or time.monotonic() >= end:
                return failure
            time.sleep(0.05)

    def generate(self, prompt, progress=None, vram=None, **kwargs) -> VideoSysOutput:
        """`progress(steps_done, total)`, if given, runs in the caller's process after each denoising step;
        raising Cancelled from it stops the generation there (on every rank) and the engine stays usable.
        Under torchrun each rank calls its own `progress`: they must all stop at the same step.
        The request's values are checked (the config's check_request), and its size against the memory available
        (core/memory.py), before any rank is asked to run it. `vram` ("24GB"; default: the config's, for a size
        other than the config's): the call's memory plan (core/planner.py plan_call), applied for this call when
        the engine can switch to it (VAE tiles; offload of whole parts in one process), else refused before any
        compute naming the config field to set."""
        pipeline_cls = self.config.pipeline_cls
        prompts = check_call(pipeline_cls.generate, prompt, kwargs, pipeline_cls.takes_seed_lists(self.config))
        values = self.config.check_request(kwargs)
        check_fits(self.config, values, getattr(self.pipeline, "transformer", None), len(prompts))  # too big: refused
        resized = any(kwargs.get(k) is not None and kwargs[k] != getattr(self.config, k)
                      for k in ("num_frames", "height", "width"))
        if vram is not None or (self.config.vram is not None and resized):
            from videosys.core import planner

            plan = planner.plan_call(self.config, values, vram or self.config.vram, per_call_offload=not self.workers)
            if plan is not None:  # the engine as set up does not fit: this call's plan
                return self._run("generate_planned", plan.settings(), prompt, progress=progress, **kwargs)
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

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the workers (killed if they have not exited within `timeout` s) and leave the process group;
        safe to call twice."""
        for commands in self.commands:
            try:
                commands.put(None)
            except (OSError, ValueError):
                pass
        end = time.monotonic() + timeout
        for process in self.workers:
            process.join(timeout=max(0.0, end - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        spawned = bool(self.workers)
        self.workers, self.commands = [], []
        if spawned and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a group the watchdog aborted (nccl): it is gone either way
                pass
        self.pipeline = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def __del__(self):
        if getattr(self, "workers", None):
            self.shutdown()


__all__ = ["VideoSysEngine", "WorkerError", "Cancelled", "ParallelState"]
