"""`videosys serve`: OpenAI's video API on the demo model, through OpenAI's own client (a real uvicorn) and
FastAPI's test client; the SQLite job store; batching."""

import io
import os
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from videosys import LatteConfig  # noqa: E402
from videosys.core.engine import VideoSysEngine  # noqa: E402
from videosys.serve.app import create_app  # noqa: E402
from videosys.serve.jobs import JobStore  # noqa: E402
from videosys.utils.video import read_video  # noqa: E402

PROMPT = "a red circle moving to the right"
LONG = 1000  # steps (DDIM's most) of a job that is still running when the test acts on it
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def engine():
    engine = VideoSysEngine(LatteConfig(preset="demo", progress_bar=False, num_inference_steps=4))
    yield engine
    engine.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(engine, tmp_path):
    """A real server (uvicorn in a thread) with an API key: its address and its output folder."""
    uvicorn = pytest.importorskip("uvicorn")
    app = create_app(engine, str(tmp_path / "out"), api_key=KEY)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.config.port}/v1", tmp_path / "out"
    server.should_exit = True
    thread.join(30)


def wait(client, video_id, until=("completed", "failed"), timeout=60.0, check=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        video = client.get(f"/v1/videos/{video_id}").json()
        if video["status"] in until and (check is None or check(video)):
            return video
        time.sleep(0.02)
    raise AssertionError(f"video {video_id} did not reach {until}: {video}")


def submit(client, **fields):
    response = client.post("/v1/videos", json={"prompt": PROMPT, **fields})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def frames_of(data: bytes, folder) -> np.ndarray:
    path = os.path.join(folder, "check.mp4")
    with open(path, "wb") as f:
        f.write(data)
    return read_video(path)[0]


def test_openai_client_round_trip(served, engine, tmp_path):
    """OpenAI's client: create (our fields as extra_body), retrieve, list, download_content, delete; a bad
    request is its BadRequestError naming the field; without the key, 401 and no job."""
    openai = pytest.importorskip("openai")
    base_url, out = served
    client = openai.OpenAI(base_url=base_url, api_key=KEY)
    video = client.videos.create(model="latte", prompt=PROMPT, seconds="1", size="64x64",
                                 extra_body={"seed": 3, "steps": 4, "cache": "teacache-fast"})
    assert video.status == "queued" and video.size == "64x64" and video.seconds == "1"
    end = time.monotonic() + 60
    while video.status in ("queued", "in_progress") and time.monotonic() < end:
        time.sleep(0.05)
        video = client.videos.retrieve(video.id)
    assert video.status == "completed" and video.progress == 100, video
    tea = video.stats["teacache"]
    assert tea["computed_steps"] + tea["reused_steps"] == 4
    assert [v.id for v in client.videos.list()] == [video.id]
    content = client.videos.download_content(video.id)
    frames = frames_of(content.read(), tmp_path)
    assert frames.shape == (8, 64, 64, 3)  # 1 s at the demo's 8 fps
    engine.set_cache("teacache-fast")
    try:  # the same generation through the engine: the served file holds that video (H.264 loses a little)
        direct = engine.generate(PROMPT, num_frames=8, seed=3).video[0].numpy()
    finally:
        engine.set_cache("none")
    assert np.abs(frames.astype(int) - direct.astype(int)).mean() < 3

    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(model="latte", prompt=PROMPT, size="72x64")
    assert err.value.body["param"] == "size" and "divisible by 16" in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.videos.create(model="sora-2", prompt=PROMPT)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="wrong").videos.create(model="latte", prompt=PROMPT)
    assert [v.id for v in client.videos.list()] == [video.id]  # none of those made a job

    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    assert os.listdir(out / "videos") == [] and list(client.videos.list()) == []
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_bad_requests_name_the_field_before_any_compute(engine, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "generate", lambda *a, **k: calls.append(1))
    with TestClient(create_app(engine, str(tmp_path))) as client:
        def error(status=400, **fields):
            response = client.post("/v1/videos", json={"prompt": PROMPT, **fields})
            assert response.status_code == status, response.text
            error = response.json()["error"]
            return error["param"], error["message"]

        assert error(num_frames=0) == ("num_frames", "num_frames must be >= 1, got 0")
        assert error(guidance=-1.0)[0] == "guidance_scale"
        assert "unknown cache 'slow'" in error(cache="slow")[1]
        assert error(colour="red")[0] == "colour"
        assert error(num_inference_steps="many")[0] == "num_inference_steps"
        assert error(prompt="")[0] == "prompt"
        assert error(seed="x")[0] == "seed"
        assert error(size="big")[0] == "size" and error(size="64x72")[0] == "size"  # 72: the family's grid
        assert error(seconds="0")[0] == "seconds" and error(seconds=1, num_frames=8)[0] == "seconds"
        assert error(steps=3, num_inference_steps=4)[0] == "steps"
        assert error(seconds=1, fps="x")[0] == "fps"
        assert error(status=404, model="sora-2")[0] == "model"
        assert "divisible by 16" in error(height=72)[1]
        assert client.post("/v1/videos", content=b"[1]", headers={"content-type": "application/json"}).status_code \
            == 400
        assert client.get("/v1/videos").json()["data"] == [] and not calls  # nothing was queued or run


def test_no_request_field_is_a_server_path(engine, tmp_path):
    """Today's Open-Sora `"reference": "/path.png"` and Wan's `image`: refused, not opened; an upload to a
    text-to-video model is refused too; nothing says what files the server has."""
    from PIL import Image

    with TestClient(create_app(engine, str(tmp_path))) as client:
        for field in ("reference", "image", "input_reference"):
            for path in ("/etc/passwd", "/no/such/file.png"):
                response = client.post("/v1/videos", json={"prompt": PROMPT, field: path})
                assert response.status_code == 400 and response.json()["error"]["param"] == field
                assert path not in response.text and "exist" not in response.text
        png = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(png, format="PNG")
        response = client.post("/v1/videos", data={"prompt": PROMPT},
                               files={"input_reference": ("a.png", png.getvalue(), "image/png")})
        assert response.status_code == 400 and "text-to-video" in response.json()["error"]["message"]
        big = client.post("/v1/videos", data={"prompt": PROMPT},
                          files={"input_reference": ("a.png", b"\0" * (11 * 2 ** 20 + 1), "image/png")})
        assert big.status_code == 413 and big.json()["error"]["param"] == "input_reference"
        assert client.get("/v1/videos").json()["data"] == []
    assert {n for n in os.listdir(tmp_path) if not n.startswith("jobs.sqlite3")} == {"inputs", "videos"}
    assert os.listdir(tmp_path / "inputs") == os.listdir(tmp_path / "videos") == []


def test_uploads_are_checked_and_kept_in_the_output_folder(tmp_path):
    """input_reference for an image-to-video family (Wan tiny-i2v's config; the checks need no weights):
    its size and type are checked from the bytes, and a good one is written under <output>/inputs/."""
    from PIL import Image

    from videosys.models.wan.pipeline import WanConfig
    from videosys.serve.app import ApiError, RequestReader

    reader = RequestReader(WanConfig(preset="tiny-i2v"), "wan", "none", max_upload=4096)
    png = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(png, format="PNG")
    request, shown, (data, ext) = reader.values({"prompt": PROMPT, "seed": 1}, png.getvalue())
    assert ext == "png" and data == png.getvalue() and request["reference_field"] == "image"
    assert "image" not in request
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    for upload, code in ((b"not an image", "unsupported_type"), (gif.getvalue(), "unsupported_type"),
                         (png.getvalue()[:60], "unsupported_type"), (b"\0" * 5000, "too_large")):
        with pytest.raises(ApiError) as err:
            reader.values({"prompt": PROMPT}, upload)
        assert (err.value.param, err.value.code) == ("input_reference", code)
    with pytest.raises(ApiError) as err:  # an image-to-video model without one
        reader.values({"prompt": PROMPT}, None)
    assert err.value.param == "input_reference"

    store = JobStore(str(tmp_path))
    job = store.submit(request, "wan", None, (data, ext))
    assert store.reference_path(job) == str(tmp_path / "inputs" / f"{job['id']}.png")
    assert open(store.reference_path(job), "rb").read() == data
    store.delete(job["id"])
    assert os.listdir(tmp_path / "inputs") == []


def test_delete_cancels_queue_full_and_engine_still_usable(engine, tmp_path):
    with TestClient(create_app(engine, str(tmp_path), max_queue=1)) as client:
        running = submit(client, num_inference_steps=LONG)
        video = wait(client, running, until=("in_progress",), check=lambda v: v["steps_done"] >= 1)
        assert video["steps_done"] < LONG and 0 <= video["progress"] < 100  # live progress of a running job
        queued = submit(client)
        assert client.get(f"/v1/videos/{queued}").json()["status"] == "queued"
        full = client.post("/v1/videos", json={"prompt": PROMPT})
        assert full.status_code == 429 and "queue is full" in full.json()["error"]["message"]
        assert client.get(f"/v1/videos/{running}/content").status_code == 409

        assert client.delete(f"/v1/videos/{queued}").json()["deleted"]  # left the queue at once
        assert client.delete(f"/v1/videos/{running}").json()["deleted"]  # stops at its next step
        after = wait(client, submit(client))  # the engine runs the next job as usual
        assert after["status"] == "completed" and after["steps_done"] == 4
        assert [v["id"] for v in client.get("/v1/videos").json()["data"]] == [after["id"]]
        assert os.listdir(tmp_path / "videos") == [f"{after['id']}.mp4"]


def test_list_pages_and_orders(engine, tmp_path):
    with TestClient(create_app(engine, str(tmp_path), max_queue=8)) as client:
        ids = [submit(client, num_inference_steps=1, num_frames=1) for _ in range(3)]
        page = client.get("/v1/videos?limit=2").json()
        assert [v["id"] for v in page["data"]] == ids[::-1][:2] and page["has_more"]
        rest = client.get(f"/v1/videos?limit=2&after={page['last_id']}").json()
        assert [v["id"] for v in rest["data"]] == [ids[0]] and not rest["has_more"]
        assert [v["id"] for v in client.get("/v1/videos?order=asc").json()["data"]] == ids
        for video_id in ids:
            wait(client, video_id)


def test_request_without_cache_runs_the_servers_caches(engine, tmp_path, monkeypatch):
    import dataclasses

    # a server started with a cache no single name says (here a list): requests default to it
    monkeypatch.setattr(engine, "config", dataclasses.replace(engine.config, cache=["taylorseer"], enable_teacache=True))
    with TestClient(create_app(engine, str(tmp_path))) as client:
        assert client.get("/info").json()["default_cache"] is None
        default = wait(client, submit(client))
        assert default["request"].get("cache") is None and {"taylorseer", "teacache"} <= set(default["stats"])
        uncached = wait(client, submit(client, cache="none"))
        assert "taylorseer" not in uncached["stats"] and "teacache" not in uncached["stats"]
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
            video = wait(client, submit(client))
        finally:
            del transformer.forward
        assert calls and video["status"] == "failed" and "out of memory (simulated)" in video["error"]["message"]
        assert wait(client, submit(client))["status"] == "completed"


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
        video = wait(client, submit(client))
        assert video["status"] == "failed" and "rank 1 died" in video["error"]["message"]
        assert rebuilt == [1] and wait(client, submit(client))["status"] == "completed"


def test_compare_gives_psnr_of_the_two_videos(engine, tmp_path):
    from skimage.metrics import peak_signal_noise_ratio

    with TestClient(create_app(engine, str(tmp_path))) as client:
        a = submit(client, cache="none", num_inference_steps=20)
        b = submit(client, cache="pab", num_inference_steps=20)
        va_, vb_ = wait(client, a), wait(client, b)
        assert va_["status"] == vb_["status"] == "completed"
        result = client.get(f"/compare?a={a}&b={b}").json()
        assert result["a"]["id"] == a and result["b"]["stats"]["pab"] == vb_["stats"]["pab"]
        assert sum(n for k, n in vb_["stats"]["pab"].items() if k.endswith("_reused")) > 0
        va, vb = (read_video(str(tmp_path / "videos" / f"{j}.mp4"))[0] for j in (a, b))
        expected = np.mean([peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(va, vb)])
        assert 10 < expected < 100 and result["psnr"] == pytest.approx(expected, abs=1e-3)
        assert client.get(f"/compare?a={a}&b={a}").json()["psnr"] == 100.0  # identical videos
        assert client.get(f"/compare?a={a}&b=missing").status_code == 404


def test_store_requeues_an_interrupted_job_once_then_fails_it(tmp_path):
    """What a restarted server finds: queued jobs stay queued; a job that was running is queued again, and
    failed with the reason the second time; leftovers of cut-short writes are removed."""
    store = JobStore(str(tmp_path))
    first, second = (store.submit({"prompt": p, "num_inference_steps": 2}, "latte") for p in ("a", "b"))
    assert [j["id"] for j in store.take()] == [first["id"]]
    (tmp_path / "videos" / ".tmp-half.mp4").write_bytes(b"\0" * 10)  # a write the crash cut short
    store.close()  # (a crash: nothing else happens)

    store = JobStore(str(tmp_path))
    assert [store.get(j["id"])["status"] for j in (first, second)] == ["queued", "queued"]
    assert store.get(first["id"])["attempts"] == 1 and os.listdir(tmp_path / "videos") == []
    assert [j["id"] for j in store.take()] == [first["id"]]  # still the oldest
    store.close()
    store = JobStore(str(tmp_path))
    failed = store.get(first["id"])
    assert failed["status"] == "failed" and failed["attempts"] == 2 and "2 times" in failed["error"]["message"]
    assert store.get(second["id"])["status"] == "queued"


def test_a_clean_stop_queues_the_running_job_again(engine, tmp_path):
    with TestClient(create_app(engine, str(tmp_path))) as client:
        running = submit(client, num_inference_steps=LONG)
        wait(client, running, until=("in_progress",))
        waiting = submit(client)
    store = JobStore(str(tmp_path))
    assert [(store.get(i)["status"], store.get(i)["attempts"]) for i in (running, waiting)] == [("queued", 0)] * 2
    store.close()
    with TestClient(create_app(engine, str(tmp_path))) as client:
        assert client.delete(f"/v1/videos/{running}").status_code == 200
        assert wait(client, waiting)["status"] == "completed"


def test_batched_jobs_equal_their_single_runs(engine, tmp_path):
    """Jobs that differ in prompt and seed run as one batch (up to max_batch); each video is the one the job
    gets alone. A cached job runs alone (its cache would decide for the whole batch)."""
    prompts = [PROMPT, "a blue square moving up", "a green triangle moving to the left"]
    with TestClient(create_app(engine, str(tmp_path), max_batch=3)) as client:
        blocker = submit(client, num_inference_steps=LONG)  # holds the engine while the others queue
        wait(client, blocker, until=("in_progress",))
        batched = [submit(client, prompt=p, seed=s, num_frames=8) for p, s in zip(prompts, (3, 5, 7))]
        cached = submit(client, seed=3, num_frames=8, cache="teacache-fast")
        client.delete(f"/v1/videos/{blocker}")
        results = [wait(client, i) for i in batched + [cached]]
        assert [r["stats"]["batch_size"] for r in results] == [3, 3, 3, 1]
        alone = [wait(client, submit(client, prompt=p, seed=s, num_frames=8)) for p, s in zip(prompts, (3, 5, 7))]
        assert all(r["stats"]["batch_size"] == 1 for r in alone)
        for a, b in zip(batched, alone):
            va, vb = (read_video(str(tmp_path / "videos" / f"{i}.mp4"))[0].astype(int) for i in (a, b["id"]))
            assert np.abs(va - vb).mean() < 0.5, (a, b["id"])  # the same frames (+-1 level) through H.264


def test_a_batch_with_a_seed_per_prompt_reproduces_the_single_runs(engine):
    prompts = [PROMPT, "a blue square moving up", "a green triangle moving to the left"]
    batch = engine.generate(prompts, seed=[3, 5, 7], num_frames=8).video
    for prompt, seed, video in zip(prompts, (3, 5, 7), batch):
        alone = engine.generate(prompt, seed=seed, num_frames=8).video[0]
        assert (alone.int() - video.int()).abs().max() <= 1  # float rounding of a batched matmul
    with pytest.raises(ValueError, match="one seed per prompt"):
        engine.generate(prompts, seed=[1, 2])
    from videosys.core.config import check_seeds

    with pytest.raises(ValueError, match="one seed per call"):  # a family whose sampler draws more noise
        check_seeds([1, 2], 2, per_sample=False)


@pytest.mark.slow
def test_delete_stops_every_rank_and_the_engine_goes_on(engine, tmp_path):
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
            wait(client, running, until=("in_progress",), check=lambda v: v["steps_done"] >= 1)
            client.delete(f"/v1/videos/{running}")
            assert wait(client, submit(client, num_inference_steps=4))["status"] == "completed"
        out = parallel.generate(PROMPT, seed=1, progress=lambda done, total: seen.append((done, total)))
        assert seen[2:] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert_same_as_single(out, engine.generate(PROMPT, seed=1, num_frames=4, num_inference_steps=4))


def test_cli_serve_builds_the_engine_from_its_flags_and_binds_localhost(engine, tmp_path, monkeypatch):
    """`videosys serve` wiring: the config from the flags, the app over that engine, uvicorn on 127.0.0.1,
    the API key from the environment (uvicorn and the engine replaced here: other tests run a real uvicorn)."""
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
            served["unauthorized"] = client.get("/info").status_code
            served["info"] = client.get("/info", headers={"Authorization": "Bearer k3y"}).json()

    monkeypatch.setattr(videosys.core.engine, "VideoSysEngine", fake_engine)
    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(engine, "shutdown", lambda: served.setdefault("shutdown", True))
    monkeypatch.setenv("VIDEOSYS_API_KEY", "k3y")
    assert main(["serve", "--model", "latte", "--preset", "demo", "--num-gpus", "2", "--cache", "pab",
                 "--set", "num_inference_steps=3", "--output-dir", str(tmp_path), "--port", "8123",
                 "--max-batch", "4"]) == 0
    config = built[0]
    assert (config.preset, config.num_gpus, config.cache, config.num_inference_steps) == ("demo", 2, "pab", 3)
    assert config.progress_bar is False
    assert (served["host"], served["port"]) == ("127.0.0.1", 8123) and served["shutdown"]
    assert served["unauthorized"] == 401
    assert served["info"]["default_cache"] == "pab" and served["info"]["max_batch"] == 4
    assert os.path.isfile(tmp_path / "jobs.sqlite3")

    # --replicas: no engine here; a Ray Serve backend with one job thread per replica (Ray itself replaced:
    # tests/test_serve_replicas.py runs it)
    import videosys.serve.replicas

    class FakeRay:
        def __init__(self, config, replicas, address, cpus):
            served.update(ray=(config.preset, replicas, address, cpus))

        def shutdown(self):
            served["ray_shutdown"] = True

    def fake_run_replicas(app, host, port):
        served["threads"] = len(app.state.runner.threads)

    built.clear()
    monkeypatch.setattr(videosys.serve.replicas, "RayBackend", FakeRay)
    monkeypatch.setattr(uvicorn, "run", fake_run_replicas)
    assert main(["serve", "--model", "latte", "--preset", "demo", "--replicas", "3", "--ray-address", "auto",
                 "--output-dir", str(tmp_path / "r")]) == 0
    assert not built and served["ray"] == ("demo", 3, "auto", 1.0) and served["threads"] == 3
    assert served["ray_shutdown"]


def _serve(folder, port):
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-m", "videosys.cli", "serve", "--model", "latte", "--preset", "demo",
                             "--set", "num_inference_steps=4", "--output-dir", str(folder), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _until(check, timeout=120.0, what="the server"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = check()
        except Exception:  # not listening yet
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: timed out")


@pytest.mark.slow
def test_sigkill_with_jobs_queued_and_one_running_loses_nothing(tmp_path):
    """The server is killed (SIGKILL) mid-job with two jobs queued; the restarted server runs the interrupted
    job again and the queued ones: every job ends completed with a whole mp4."""
    import signal

    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/videos"
    server = _serve(tmp_path, port)
    try:
        _until(lambda: httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200)
        running = httpx.post(url, json={"prompt": PROMPT, "steps": 60}).json()["id"]
        queued = [httpx.post(url, json={"prompt": PROMPT, "seed": s}).json()["id"] for s in (1, 2)]
        _until(lambda: httpx.get(f"{url}/{running}").json()["steps_done"] >= 2, what="the running job")
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        server = _serve(tmp_path, port)
        ids = [running, *queued]
        videos = _until(lambda: (lambda v: v if all(x["status"] == "completed" for x in v) else None)(
            [httpx.get(f"{url}/{i}").json() for i in ids]), timeout=180, what="the jobs after the restart")
        assert [v["attempts"] for v in videos] == [2, 1, 1]  # the interrupted job ran a second time
        for video_id in ids:
            frames = frames_of(httpx.get(f"{url}/{video_id}/content").content, tmp_path)
            assert frames.shape == (16, 64, 64, 3)
        assert sorted(os.listdir(tmp_path / "videos")) == sorted(f"{i}.mp4" for i in ids)  # no leftovers
    finally:
        server.kill()
        server.wait(30)
