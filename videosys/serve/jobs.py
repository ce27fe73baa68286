"""The job queue of `videosys serve`: records persisted atomically, one job at a time on the engine.

    <output>/jobs/<id>.json    one record per job, rewritten whole at every change of state
    <output>/videos/<id>.mp4   the result, written whole before its record says "done"

A restarted server lists every record it finds; a job that was queued or running when the last
server stopped is marked failed (its video, if the rename happened, is removed with it).
"""

import collections
import glob
import inspect
import json
import os
import threading
import time
import traceback
import uuid

from videosys.core.engine import Cancelled
from videosys.utils.files import write_json

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
_UNSET = object()


class QueueFull(Exception):
    pass


class JobStore:
    """Job records in memory and on disk, and the queue of the ones waiting to run."""

    def __init__(self, folder: str, max_queue: int = 8):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.folder, self.max_queue = os.path.abspath(folder), max_queue
        self.jobs_dir, self.videos_dir = os.path.join(self.folder, "jobs"), os.path.join(self.folder, "videos")
        os.makedirs(self.jobs_dir, exist_ok=True)
        os.makedirs(self.videos_dir, exist_ok=True)
        self.lock = threading.Condition()
        self.jobs: dict[str, dict] = {}
        self.queue: collections.deque[str] = collections.deque()
        self.cancel_requested: set[str] = set()
        self._recover()

    def _recover(self) -> None:
        for leftover in glob.glob(os.path.join(self.folder, "*", ".tmp-*")):  # a write a crash cut short
            os.remove(leftover)
        from videosys.utils.files import load_json

        for path in sorted(glob.glob(os.path.join(self.jobs_dir, "*.json"))):
            job = load_json(path, "job record")  # a record that does not parse: an error naming it and the line
            if job["state"] not in FINISHED:
                job.update(state=FAILED, error=f"interrupted: the server stopped while the job was {job['state']}",
                           finished=time.time())
                video = self.video_path(job["id"])
                if os.path.exists(video):
                    os.remove(video)
                self._save(job)
            self.jobs[job["id"]] = job

    # ---- records -------------------------------------------------------------------------
    def video_path(self, job_id: str) -> str:
        return os.path.join(self.videos_dir, f"{job_id}.mp4")

    def _save(self, job: dict) -> None:
        write_json(os.path.join(self.jobs_dir, f"{job['id']}.json"), job)

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            job = self.jobs.get(job_id)
            return None if job is None else json.loads(json.dumps(job))  # a copy, safe to serialise

    def list(self) -> list[dict]:
        with self.lock:
            return sorted((self.get(i) for i in self.jobs), key=lambda j: j["created"], reverse=True)

    def update(self, job_id: str, persist: bool = True, **changes) -> None:
        with self.lock:
            job = self.jobs[job_id]
            job.update(changes)
            if persist:
                self._save(job)

    # ---- the queue -----------------------------------------------------------------------
    def submit(self, request: dict, model: str) -> dict:
        with self.lock:
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting); try again later")
            job = {"id": uuid.uuid4().hex[:12], "state": QUEUED, "model": model, "request": request,
                   "created": time.time(), "started": None, "finished": None, "error": None, "stats": None,
                   "progress": {"steps_done": 0, "total_steps": request.get("num_inference_steps"), "cache": {}}}
            self.jobs[job["id"]] = job
            self._save(job)
            self.queue.append(job["id"])
            self.lock.notify_all()
            return self.get(job["id"])

    def cancel(self, job_id: str) -> dict:
        """A queued job leaves the queue at once; a running one stops after its current step."""
        with self.lock:
            job = self.jobs[job_id]
            if job["state"] == QUEUED:
                self.queue.remove(job_id)
                job.update(state=CANCELLED, finished=time.time())
                self._save(job)
            elif job["state"] == RUNNING:
                self.cancel_requested.add(job_id)
            return self.get(job_id)

    def next_job(self, stop: threading.Event, timeout: float = 0.2) -> dict | None:
        """The oldest queued job, now marked running; None when `stop` is set."""
        with self.lock:
            while not self.queue or stop.is_set():
                if stop.is_set():  # queued jobs stay queued: the next server marks them failed
                    return None
                self.lock.wait(timeout)
            job_id = self.queue.popleft()
            self.update(job_id, state=RUNNING, started=time.time())
            return self.get(job_id)


class JobRunner:
    """A thread that runs the queued jobs on one engine, one at a time."""

    def __init__(self, store: JobStore, engine, rebuild_engine=None):
        self.store, self.engine, self.rebuild_engine = store, engine, rebuild_engine
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="videosys-jobs", daemon=True)
        self.cache = _UNSET  # the cache name the engine has on (None: the server's configured caches)

    def start(self) -> None:
        self.thread.start()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop taking jobs, stop the running one at its next step, and wait for the thread."""
        self.stop.set()  # the running job's next step raises Cancelled
        with self.store.lock:
            self.store.lock.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _loop(self) -> None:
        while not self.stop.is_set():
            job = self.store.next_job(self.stop)
            if job is not None:
                self.run(job)

    def run(self, job: dict) -> None:
        job_id, request = job["id"], dict(job["request"])
        prompt, cache = request.pop("prompt"), request.pop("cache", None)  # None: the server's configured caches

        def progress(done: int, total: int) -> None:
            pipeline = self.engine.pipeline  # rank 0's: its caches count what every rank decided
            self.store.update(job_id, persist=False,
                              progress={"steps_done": done, "total_steps": total,
                                        "cache": pipeline.transformer.cache_stats()})
            if job_id in self.store.cancel_requested or self.stop.is_set():
                raise Cancelled(f"cancelled after step {done}/{total}")

        try:
            if self.engine.pipeline is None:
                raise RuntimeError("the engine is down (a rank failed and it could not be rebuilt)")
            takes = inspect.signature(self.engine.pipeline.generate).parameters
            fps = request.get("fps") if "fps" in takes else request.pop("fps", None)  # else only the file's rate
            if cache != self.cache:
                self.engine.set_cache(self.engine.config.cache_configs() if cache is None else cache)
                self.cache = cache
            out = self.engine.generate(prompt, progress=progress, **request)
            self.engine.save_video(out.video[0], self.store.video_path(job_id), fps=fps)
            self.store.update(job_id, state=DONE, finished=time.time(), stats=_plain(out.stats))
        except Cancelled:
            if self.stop.is_set():  # the server is stopping: as a restart would find it, never half-done
                self.store.update(job_id, state=FAILED, finished=time.time(),
                                  error="interrupted: the server stopped while the job was running")
            else:
                self.store.update(job_id, state=CANCELLED, finished=time.time())
        except Exception as err:  # an engine failure fails this job; the server goes on with the next
            self.store.update(job_id, state=FAILED, finished=time.time(), error=f"{type(err).__name__}: {err}")
            self._recover_engine()
        finally:
            self.store.cancel_requested.discard(job_id)

    def _recover_engine(self) -> None:
        """A multi-process engine shuts itself down when a rank fails: build a new one for the next job."""
        if self.engine.pipeline is None and self.rebuild_engine is not None:
            try:
                self.engine = self.rebuild_engine()
                self.cache = _UNSET
            except Exception:  # the next jobs fail with "the engine is down"; the server still answers
                traceback.print_exc()


def _plain(value):
    """Stats as JSON values (floats rounded for reading)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value
