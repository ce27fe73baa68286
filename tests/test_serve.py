"""`videosys serve`: the HTTP API on the demo model through FastAPI's test client."""

import json
import os
import shutil
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from videosys import LatteConfig  # noqa: E402
from videosys.core.engine import VideoSysEngine  # noqa: E402
from videosys.serve.app import create_app  # noqa: E402
from videosys.utils.video import read_video  # noqa: E402

PROMPT = "a red circle moving to the right"
LONG = 1000  # steps (DDIM's most) of a job that is still running when the test acts on it


@pytest.fixture(scope="module")
def engine():
    engine = VideoSysEngine(LatteConfig(preset="demo", progress_bar=False, num_inference_steps=4))
    yield engine
    engine.shutdown()


def wait(client, job_id, until=("done", "failed", "cancelled"), timeout=60.0, check=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in until and (check is None or check(job)):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not reach {until}: {job}")


def submit(client, **fields):
    response = client.post("/jobs", json={"prompt": PROMPT, **fields})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_submit_progress_and_download_mp4(engine, tmp_path):
    with TestClient(create_app(engine, str(tmp_path))) as client:
        assert client.get("/health").json()["status"] == "ok"
        info = client.get("/info").json()
        assert {f["name"]: f["default"] for f in info["fields"]}["num_inference_steps"] == 4  # the config's
        job_id = submit(client, num_frames=8, cache="teacache-fast", seed=3)
        job = wait(client, job_id)
        assert job["state"] == "done", job
        assert job["progress"]["steps_done"] == job["progress"]["total_steps"] == 4
        tea = job["progress"]["cache"]["teacache"]
        assert tea["computed_steps"] + tea["reused_steps"] == 4 and job["stats"]["teacache"] == tea
        response = client.get(f"/jobs/{job_id}/video")
        assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
        path = tmp_path / "download.mp4"
        path.write_bytes(response.content)
        frames, fps = read_video(str(path))
        assert frames.shape == (8, 64, 64, 3) and fps == 8
        # the same generation through the engine: the served file holds that video (H.264 loses a little)
        direct = engine.generate(PROMPT, num_frames=8, seed=3).video[0].numpy()
        assert np.abs(frames.astype(int) - direct.astype(int)).mean() < 3
        assert [j["id"] for j in client.get("/jobs").json()] == [job_id]
        assert client.get("/jobs/nope").status_code == 404


def test_bad_requests_name_the_field(engine, tmp_path):
    with TestClient(create_app(engine, str(tmp_path))) as client:
        def error(**fields):
            response = client.post("/jobs", json={"prompt": PROMPT, **fields})
            assert response.status_code == 422, response.text
            return {tuple(d["loc"][1:]): d["msg"] for d in response.json()["detail"]}

        assert "num_frames must be >= 1" in error(num_frames=0)[("num_frames",)]
        assert "guidance_scale" in error(guidance_scale=-1.0)[("guidance_scale",)]
        assert "unknown cache 'slow'" in error(cache="slow")[("cache",)]
        assert ("colour",) in error(colour="red")
        assert ("num_inference_steps",) in error(num_inference_steps="many")
        assert ("prompt",) in error(prompt="")
        # the family's size grid (VAE x patch size) is the config's check_request: refused at submission too
        assert "height=72 must be divisible by 16" in error(height=72)[("height",)]
        assert "width=40 must be divisible by 16" in error(width=40)[("width",)]
        assert client.get("/jobs").json() == []  # nothing was queued


def test_cancel_queue_full_and_engine_still_usable(engine, tmp_path):
    with TestClient(create_app(engine, str(tmp_path), max_queue=1)) as client:
        running = submit(client, num_inference_steps=LONG)
        job = wait(client, running, until=("running",), check=lambda j: j["progress"]["steps_done"] >= 1)
        assert job["progress"]["steps_done"] < LONG  # live progress of a running job
        queued = submit(client)
        assert client.get(f"/jobs/{queued}").json()["state"] == "queued"
        full = client.post("/jobs", json={"prompt": PROMPT})
        assert full.status_code == 429 and "queue is full" in full.json()["detail"]

        assert client.post(f"/jobs/{queued}/cancel").json()["state"] == "cancelled"  # left the queue at once
        client.post(f"/jobs/{running}/cancel")
        job = wait(client, running)
        assert job["state"] == "cancelled" and job["progress"]["steps_done"] < LONG
        assert client.get(f"/jobs/{running}/video").status_code == 409
        assert not os.path.exists(tmp_path / "videos" / f"{running}.mp4")

        after = wait(client, submit(client))  # the engine runs the next job as usual
        assert after["state"] == "done" and after["progress"]["steps_done"] == 4
        assert client.get(f"/jobs/{queued}").json()["started"] is None  # the cancelled queued job never ran


def test_request_without_cache_runs_the_servers_caches(engine, tmp_path, monkeypatch):
    import dataclasses

    # a server started with a cache no single name says (here a list): requests default to it
    monkeypatch.setattr(engine, "config", dataclasses.replace(engine.config, cache=["pab"], enable_teacache=True))
    with TestClient(create_app(engine, str(tmp_path))) as client:
        assert client.get("/info").json()["default_cache"] is None
        default = wait(client, submit(client))
        assert default["request"].get("cache") is None and {"pab", "teacache"} <= set(default["stats"])
        uncached = wait(client, submit(client, cache="none"))
        assert "pab" not in uncached["stats"] and "teacache" not in uncached["stats"]
        assert "teacache" in wait(client, submit(client, cache="teacache-fast"))["stats"]  # not "enabled twice"


def test_engine_failure_fails_the_job_and_serving_goes_on(engine, tmp_path):
    transformer = engine.pipeline.transformer
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of memory (simulated)")

    with TestClient(create_app(engine, str(tmp_path))) as client:
        transformer.forward = broken
        try:
            job = wait(client, submit(client))
        finally:
            del transformer.forward
        assert calls and job["state"] == "failed" and "out of memory (simulated)" in job["error"]
        assert wait(client, submit(client))["state"] == "done"


def test_a_dead_engine_is_rebuilt_for_the_next_job(engine, tmp_path):
    from videosys.core.engine import WorkerError

    class DyingEngine:  # a multi-process engine whose rank died: the call fails and the engine shuts down
        config, pipeline = engine.config, engine.pipeline

        def set_cache(self, cache):
            pass

        def generate(self, prompt, **kwargs):
            self.pipeline = None
            raise WorkerError("rank 1 died (exit code 1)")

    rebuilt = []
    app = create_app(DyingEngine(), str(tmp_path), rebuild_engine=lambda: rebuilt.append(1) or engine)
    with TestClient(app) as client:
        job = wait(client, submit(client))
        assert job["state"] == "failed" and "rank 1 died" in job["error"]
        assert rebuilt == [1] and wait(client, submit(client))["state"] == "done"


def test_compare_gives_psnr_of_the_two_videos(engine, tmp_path):
    from skimage.metrics import peak_signal_noise_ratio

    with TestClient(create_app(engine, str(tmp_path))) as client:
        a = submit(client, cache="none", num_inference_steps=20)
        b = submit(client, cache="pab", num_inference_steps=20)
        ja, jb = wait(client, a), wait(client, b)
        assert ja["state"] == jb["state"] == "done"
        result = client.get(f"/compare?a={a}&b={b}").json()
        assert result["a"]["id"] == a and result["b"]["stats"]["pab"] == jb["stats"]["pab"]
        assert sum(n for k, n in jb["stats"]["pab"].items() if k.endswith("_reused")) > 0
        va, vb = (read_video(str(tmp_path / "videos" / f"{j}.mp4"))[0] for j in (a, b))
        expected = np.mean([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(va, vb)])
        assert 10 < expected < 100 and result["psnr"] == pytest.approx(expected, abs=1e-3)
        assert client.get(f"/compare?a={a}&b={a}").json()["psnr"] == 100.0  # identical videos
        assert client.get(f"/compare?a={a}&b=missing").status_code == 404


def test_restart_keeps_finished_jobs_and_fails_interrupted_ones(engine, tmp_path):
    first, snapshot = tmp_path / "first", tmp_path / "snapshot"
    with TestClient(create_app(engine, str(first))) as client:
        done = wait(client, submit(client))["id"]
        running = submit(client, num_inference_steps=LONG)
        wait(client, running, until=("running",))
        waiting = submit(client)
        shutil.copytree(first, snapshot)  # the folder as a crash would leave it: one running, one queued
        (snapshot / "videos" / ".tmp-half.mp4").write_bytes(b"\0" * 10)  # a write the crash cut short
    # a clean stop (the app's shutdown) stops the running job at its next step, as failed, and runs no other
    stopped = json.loads((first / "jobs" / f"{running}.json").read_text())
    assert stopped["state"] == "failed" and "the server stopped" in stopped["error"]
    assert json.loads((first / "jobs" / f"{waiting}.json").read_text())["state"] == "queued"

    with TestClient(create_app(engine, str(snapshot))) as client:
        jobs = {j["id"]: j for j in client.get("/jobs").json()}
        assert set(jobs) == {done, running, waiting}
        assert jobs[done]["state"] == "done"
        assert read_video_bytes(client.get(f"/jobs/{done}/video").content, tmp_path).shape[0] == 16
        for job_id in (running, waiting):
            assert jobs[job_id]["state"] == "failed" and "interrupted" in jobs[job_id]["error"]
        assert os.listdir(snapshot / "videos") == [f"{done}.mp4"]
        assert wait(client, submit(client))["state"] == "done"  # and the restarted server works


def read_video_bytes(data: bytes, folder) -> np.ndarray:
    path = os.path.join(folder, "check.mp4")
    with open(path, "wb") as f:
        f.write(data)
    return read_video(path)[0]


@pytest.mark.slow
def test_cancel_stops_every_rank_and_the_engine_goes_on(engine, tmp_path):
    """With several processes a cancel reaches every rank at the same step boundary: no rank is left
    inside a collective, so the same engine serves the next job, and serves it right."""
    from distributed import assert_same_as_single

    from videosys.core.engine import Cancelled

    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 2:
            raise Cancelled("stop")

    with VideoSysEngine(LatteConfig(preset="demo", progress_bar=False, num_gpus=2, num_frames=4,
                                    num_inference_steps=4)) as parallel:
        with pytest.raises(Cancelled):
            parallel.generate(PROMPT, seed=1, progress=progress)
        assert seen == [(1, 4), (2, 4)]
        with TestClient(create_app(parallel, str(tmp_path))) as client:  # and a running job behind the server
            running = submit(client, num_inference_steps=LONG)
            wait(client, running, until=("running",), check=lambda j: j["progress"]["steps_done"] >= 1)
            client.post(f"/jobs/{running}/cancel")
            job = wait(client, running)
            assert job["state"] == "cancelled" and job["progress"]["steps_done"] < LONG
        out = parallel.generate(PROMPT, seed=1, progress=lambda done, total: seen.append((done, total)))
        assert seen[2:] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert_same_as_single(out, engine.generate(PROMPT, seed=1, num_frames=4, num_inference_steps=4))


def test_cli_serve_builds_the_engine_from_its_flags_and_binds_localhost(engine, tmp_path, monkeypatch):
    """`videosys serve` wiring: the config from the flags, the app over that engine, uvicorn on 127.0.0.1
    (uvicorn and the engine replaced here: the browser test runs a real uvicorn)."""
    import uvicorn

    import videosys.core.engine
    from videosys.cli import main

    built, served = [], {}

    def fake_engine(config):
        built.append(config)
        monkeypatch.setattr(engine, "config", config)  # what the app reads from the engine it is given
        return engine

    def fake_run(app, host, port):
        served.update(host=host, port=port)
        with TestClient(app) as client:
            served["info"] = client.get("/info").json()

    monkeypatch.setattr(videosys.core.engine, "VideoSysEngine", fake_engine)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(engine, "shutdown", lambda: served.setdefault("shutdown", True))
    assert main(["serve", "--model", "latte", "--preset", "demo", "--num-gpus", "2", "--cache", "pab",
                 "--set", "num_inference_steps=3", "--output-dir", str(tmp_path), "--port", "8123"]) == 0
    config = built[0]
    assert (config.preset, config.num_gpus, config.cache, config.num_inference_steps) == ("demo", 2, "pab", 3)
    assert config.progress_bar is False
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123) and served["shutdown"]
    assert served["info"]["default_cache"] == "pab" and os.path.isdir(tmp_path / "jobs")
