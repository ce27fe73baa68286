"""The threads that run the queued jobs: each takes the oldest job (with up to max_batch - 1 queued jobs it
batches with) from the store and runs it on a backend: the engine in this process (`LocalBackend`), or one
of the Ray Serve replicas (`videosys.serve.replicas`), one thread per replica."""

import inspect
import threading
import traceback

from videosys.core.engine import Cancelled
from videosys.serve.jobs import JobStore
from videosys.utils.files import atomic_path

_UNSET = object()


def load_reference(path: str):
    """An uploaded input_reference (checked at submission) as an RGB PIL image."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


class LocalBackend:
    """The engine in this process: per-step progress, and a running job stops at its next step when asked."""

    def __init__(self, engine, rebuild_engine=None):
        self.engine, self.rebuild_engine = engine, rebuild_engine
        self.cache = _UNSET  # the cache name the engine has on (None: the server's configured caches)

    def run(self, prompts: list[str], seeds: list[int], request: dict, paths: list[str], progress) -> dict:
        """Generate `prompts` (one batch) and write video i to paths[i]; the stats. `progress(done, total,
        cache_stats)` may raise Cancelled."""
        request = dict(request)
        cache = request.pop("cache", None)
        if self.engine.pipeline is None:
            raise RuntimeError("the engine is down (a rank failed and it could not be rebuilt)")
        takes = inspect.signature(self.engine.pipeline.generate).parameters
        fps = request.get("fps") if "fps" in takes else request.pop("fps", None)  # else only the file's rate
        if cache != self.cache:
            self.engine.set_cache(self.engine.config.cache_configs() if cache is None else cache)
            self.cache = cache

        def step(done, total):  # rank 0's caches count what every rank decided
            progress(done, total, self.engine.pipeline.transformer.cache_stats())

        try:
            out = self.engine.generate(prompts[0] if len(prompts) == 1 else prompts, progress=step,
                                       seed=seeds[0] if len(seeds) == 1 else seeds, **request)
        except Cancelled:
            raise
        except Exception:
            self._recover_engine()
            raise
        for video, path in zip(out.video, paths):
            self.engine.save_video(video, path, fps=fps)  # whole or not at all (a temporary file renamed)
        return out.stats

    def _recover_engine(self) -> None:
        """A multi-process engine shuts itself down when a rank fails: build a new one for the next job."""
        if self.engine.pipeline is None and self.rebuild_engine is not None:
            try:
                self.engine = self.rebuild_engine()
                self.cache = _UNSET
            except Exception:  # the next jobs fail with "the engine is down"; the server still answers
                traceback.print_exc()

    def shutdown(self) -> None:
        self.engine.shutdown()


def write_bytes(path: str, data: bytes) -> None:
    """A video received from a replica, written whole before any row says completed."""
    with atomic_path(path, ".mp4") as tmp, open(tmp, "wb") as f:
        f.write(data)


class JobRunner:
    """`workers` threads taking jobs from the store and running them on `backend`."""

    def __init__(self, store: JobStore, backend, max_batch: int = 1, workers: int = 1):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.store, self.backend, self.max_batch = store, backend, max_batch
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, name=f"videosys-jobs-{i}", daemon=True)
                        for i in range(workers)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop taking jobs; a running one stops at its next step and is queued again for the next server."""
        self.stop.set()
        with self.store.lock:
            self.store.lock.notify_all()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                jobs = self.store.take(self.max_batch)
                if jobs:
                    self.run(jobs)
                else:
                    self.store.wait(self.stop)
            except Exception:  # a store error: this thread must outlive it, or the queue stalls unseen
                traceback.print_exc()
                self.stop.wait(1.0)

    def run(self, jobs: list[dict]) -> None:
        ids = [job["id"] for job in jobs]
        request = {k: v for k, v in jobs[0]["request"].items() if k not in ("prompt", "seed", "shown")}
        field = request.pop("reference_field", None)

        def progress(done: int, total: int, cache: dict) -> None:
            self.store.set_progress(ids, done, total, cache)
            if self.stop.is_set() or not any(self.store.exists(i) for i in ids):  # stopping, or all deleted
                raise Cancelled(f"stopped after step {done}/{total}")

        try:
            if jobs[0]["reference"]:  # never batched: the family's image field gets the uploaded image
                request[field] = load_reference(self.store.reference_path(jobs[0]))
            stats = self.backend.run([j["request"]["prompt"] for j in jobs], [j["request"].get("seed", 0) for j in jobs],
                                     request, [self.store.video_path(i) for i in ids], progress)
        except Cancelled:
            for job_id in ids:  # a clean stop: queued again; a deleted job's row is gone already
                if self.stop.is_set():
                    self.store.requeue(job_id)
            return
        except Exception as err:  # this batch fails; the server goes on with the next
            for job_id in ids:
                self.store.fail(job_id, "generation_failed", f"{type(err).__name__}: {err}")
            return
        for job_id in ids:
            self.store.complete(job_id, _plain({**stats, "batch_size": len(ids)}))


def _plain(value):
    """Stats as JSON values (floats rounded for reading)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value
