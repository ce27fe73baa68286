"""The job store of `videosys serve`: SQLite (stdlib, WAL), one row per job, each change one transaction.

    <output>/jobs.sqlite3       the rows: status, request, attempts, error, stats
    <output>/videos/<id>.mp4    the result, written whole (renamed into place) before its row says completed
    <output>/inputs/<id>.<ext>  an uploaded input_reference, written whole before its row exists

Statuses are OpenAI's: queued, in_progress, completed, failed. A deleted job's row and files go at once
(a running one stops at its next step). A server that starts finds the rows the last one left: queued
jobs stay queued and run; a job that was in_progress is queued again once, and failed with the reason
the second time it is found interrupted (`max_attempts`). Live progress (steps done, cache reuse) is
kept in memory: a restart starts the job over anyway.
"""

from __future__ import annotations  # the annotations name `list`, which JobStore.list shadows

import json
import os
import sqlite3
import threading
import time
import uuid

from videosys.utils.files import atomic_path

QUEUED, RUNNING, DONE, FAILED = "queued", "in_progress", "completed", "failed"
FINISHED = (DONE, FAILED)

_SCHEMA = """CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, status TEXT NOT NULL, model TEXT NOT NULL,
    request TEXT NOT NULL, batch_key TEXT, reference TEXT, created REAL NOT NULL, started REAL, finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT, stats TEXT)"""


class QueueFull(Exception):
    pass


class JobStore:
    """The rows, and the queue they make (oldest first). Thread-safe: one connection behind one lock."""

    def __init__(self, folder: str, max_queue: int = 8, max_attempts: int = 2):
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.folder, self.max_queue, self.max_attempts = os.path.abspath(folder), max_queue, max_attempts
        self.videos_dir, self.inputs_dir = os.path.join(self.folder, "videos"), os.path.join(self.folder, "inputs")
        for folder in (self.videos_dir, self.inputs_dir):
            os.makedirs(folder, exist_ok=True)
        self.lock = threading.Condition()
        path = os.path.join(self.folder, "jobs.sqlite3")
        self.db = sqlite3.connect(path, check_same_thread=False,
                                  isolation_level=None)  # transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a committed row survives a power cut too, not only a crash
            self.db.execute(_SCHEMA)
        except sqlite3.DatabaseError as err:  # another file under the store's name: say which, no traceback
            self.db.close()
            raise ValueError(f"{path}: not a videosys job store ({err}); move it away or serve from another "
                             "--output-dir") from None
        self.progress: dict[str, dict] = {}  # id -> steps_done, total_steps, cache (the running jobs')
        self._recover()

    def _transaction(self):
        return _Transaction(self.db)

    def _recover(self) -> None:
        with self.lock, self._transaction() as db:
            for row in db.execute("SELECT id, attempts FROM jobs WHERE status = ?", (RUNNING,)).fetchall():
                if row["attempts"] >= self.max_attempts:
                    error = {"code": "interrupted", "message": f"the server stopped while the job was running, "
                             f"{row['attempts']} times: it is not tried again"}
                    db.execute("UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ?",
                               (FAILED, time.time(), json.dumps(error), row["id"]))
                else:
                    db.execute("UPDATE jobs SET status = ?, started = NULL WHERE id = ?", (QUEUED, row["id"]))
            known = {r["id"] for r in db.execute("SELECT id FROM jobs")}
        for folder in (self.videos_dir, self.inputs_dir):  # cut-short writes, and files no row owns
            for name in os.listdir(folder):
                if name.startswith(".tmp-") or name.split(".")[0] not in known:
                    os.remove(os.path.join(folder, name))

    # ---- paths (inside the output folder only; ids are ours) ---------------------------------
    def video_path(self, job_id: str) -> str:
        return os.path.join(self.videos_dir, f"{job_id}.mp4")

    def reference_path(self, job: dict) -> str | None:
        return os.path.join(self.inputs_dir, job["reference"]) if job.get("reference") else None

    # ---- rows ----------------------------------------------------------------------------
    def _job(self, row) -> dict:
        job = dict(row)
        for key in ("request", "error", "stats"):
            job[key] = json.loads(job[key]) if job[key] is not None else None
        job.pop("seq")
        job["progress"] = dict(self.progress.get(job["id"]) or {
            "steps_done": 0, "total_steps": job["request"].get("num_inference_steps"), "cache": {}})
        if job["status"] == DONE:
            job["progress"]["steps_done"] = job["progress"]["total_steps"]
        return job

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else self._job(row)

    def list(self, order: str = "desc", after: str | None = None, limit: int | None = None) -> list[dict]:
        """Jobs newest first ("desc") or oldest first; `after` an id: the ones past it in that order."""
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where, args = "", []
        with self.lock:
            if after is not None:
                where, args = f"WHERE seq {op} (SELECT seq FROM jobs WHERE id = ?)", [after]
            query = f"SELECT * FROM jobs {where} ORDER BY seq {direction}" + (" LIMIT ?" if limit else "")
            rows = self.db.execute(query, args + ([limit] if limit else [])).fetchall()
            return [self._job(r) for r in rows]

    def queued(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)).fetchone()[0]

    def submit(self, request: dict, model: str, batch_key: str | None = None,
               reference: tuple[bytes, str] | None = None) -> dict:
        """Queue a job; `reference`: an uploaded image's (bytes, extension), written whole before the row."""
        job_id = uuid.uuid4().hex[:16]
        with self.lock:
            if self.queued() >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting); try again later")
            name = None
            if reference is not None:
                name = f"{job_id}.{reference[1]}"
                with atomic_path(os.path.join(self.inputs_dir, name)) as tmp, open(tmp, "wb") as f:
                    f.write(reference[0])
            with self._transaction() as db:
                db.execute("INSERT INTO jobs (id, status, model, request, batch_key, reference, created) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (job_id, QUEUED, model, json.dumps(request), batch_key, name, time.time()))
            self.lock.notify_all()
        return self.get(job_id)

    def take(self, max_batch: int = 1) -> list[dict]:
        """The oldest queued job and up to max_batch - 1 more with its batch key, now in_progress (one
        transaction); [] when none is queued."""
        with self.lock:  # the rows are read back under the lock: a delete cannot come in between
            with self._transaction() as db:
                first = db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", (QUEUED,)).fetchone()
                if first is None:
                    return []
                rows = [first]
                if first["batch_key"] is not None and max_batch > 1:
                    rows += db.execute("SELECT * FROM jobs WHERE status = ? AND batch_key = ? AND seq > ? ORDER BY "
                                       "seq LIMIT ?", (QUEUED, first["batch_key"], first["seq"], max_batch - 1)
                                       ).fetchall()
                now = time.time()
                for row in rows:
                    db.execute("UPDATE jobs SET status = ?, started = ?, attempts = attempts + 1 WHERE id = ?",
                               (RUNNING, now, row["id"]))
            return [self.get(r["id"]) for r in rows]

    def wait(self, stop: threading.Event, timeout: float = 0.2) -> None:
        """Block until a job may be queued (a submit) or `timeout` passes."""
        with self.lock:
            if not stop.is_set():
                self.lock.wait(timeout)

    def set_progress(self, job_ids, done: int, total: int, cache: dict) -> None:
        with self.lock:
            for job_id in job_ids:
                self.progress[job_id] = {"steps_done": done, "total_steps": total, "cache": cache}

    def _change(self, job_id: str, status: str, **columns) -> bool:
        """Set a running job's status (and columns); False when its row is gone (deleted meanwhile)."""
        names = ", ".join(f"{k} = ?" for k in columns)
        values = [json.dumps(v) if k in ("error", "stats") and v is not None else v for k, v in columns.items()]
        with self.lock, self._transaction() as db:
            changed = db.execute(f"UPDATE jobs SET status = ?{', ' + names if names else ''} WHERE id = ? AND "
                                 "status = ?", (status, *values, job_id, RUNNING)).rowcount
            self.progress.pop(job_id, None)
        return bool(changed)

    def complete(self, job_id: str, stats: dict) -> bool:
        """The video is in place: the row says completed. A job deleted meanwhile leaves no file."""
        if self._change(job_id, DONE, finished=time.time(), stats=stats):
            return True
        _remove(self.video_path(job_id))
        return False

    def fail(self, job_id: str, code: str, message: str) -> None:
        self._change(job_id, FAILED, finished=time.time(), error={"code": code, "message": message})

    def requeue(self, job_id: str) -> None:
        """A job a clean shutdown stopped: queued again, the attempt not counted."""
        with self.lock, self._transaction() as db:
            db.execute("UPDATE jobs SET status = ?, started = NULL, attempts = attempts - 1 WHERE id = ? AND "
                       "status = ?", (QUEUED, job_id, RUNNING))
            self.progress.pop(job_id, None)

    def delete(self, job_id: str) -> bool:
        """Remove the row and its files (a running job's generation notices at its next step)."""
        with self.lock:
            job = self.get(job_id)
            if job is None:
                return False
            with self._transaction() as db:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            self.progress.pop(job_id, None)
        _remove(self.video_path(job_id))
        if job["reference"]:
            _remove(self.reference_path(job))
        return True

    def exists(self, job_id: str) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def close(self) -> None:
        with self.lock:
            self.db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error): one change, whole or not at all."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, *exc):
        self.db.execute("ROLLBACK" if kind else "COMMIT")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
