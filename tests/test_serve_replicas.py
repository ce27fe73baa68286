"""`videosys serve --replicas 2`: two engines on Ray Serve (CPU, Latte's tiny preset) behind the one API."""

import os
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("ray.serve")
from fastapi.testclient import TestClient  # noqa: E402

from videosys import LatteConfig, VideoSysEngine  # noqa: E402
from videosys.serve.app import create_app  # noqa: E402
from videosys.utils.video import read_video  # noqa: E402

PROMPT = "a red circle moving to the right"


@pytest.mark.slow
def test_two_replicas_serve_the_jobs_behind_one_api(tmp_path):
    from videosys.serve.replicas import RayBackend

    config = LatteConfig(preset="tiny", progress_bar=False, num_inference_steps=3, num_frames=4, device="cpu")
    backend = RayBackend(config, replicas=2, cpus_per_replica=1)
    try:
        with TestClient(create_app(None, str(tmp_path), config=config, backend=backend, workers=2)) as client:
            ids = [client.post("/v1/videos", json={"prompt": PROMPT, "seed": s}).json()["id"] for s in range(4)]
            deleted = client.post("/v1/videos", json={"prompt": PROMPT, "steps": 1000}).json()["id"]
            end = time.monotonic() + 240
            while time.monotonic() < end:
                videos = [client.get(f"/v1/videos/{i}").json() for i in ids]
                if all(v["status"] in ("completed", "failed") for v in videos):
                    break
                time.sleep(0.2)
            assert [v["status"] for v in videos] == ["completed"] * 4, [v["error"] for v in videos]
            assert len({v["stats"]["replica"] for v in videos}) == 2  # both engines served
            assert client.delete(f"/v1/videos/{deleted}").json()["deleted"]  # the Ray request is cancelled
            assert client.post("/v1/videos", json={"prompt": PROMPT, "size": "72x64"}).status_code == 400
    finally:
        backend.shutdown()
    with VideoSysEngine(config) as engine:  # each replica's video is the local engine's (both through H.264)
        for seed, video in enumerate(videos):
            local = engine.save_video(engine.generate(PROMPT, seed=seed).video[0], str(tmp_path / "local.mp4"))
            served = read_video(str(tmp_path / "videos" / f"{video['id']}.mp4"))[0].astype(int)
            assert np.abs(served - read_video(local)[0].astype(int)).mean() < 0.5
        os.remove(local)
    assert sorted(os.listdir(tmp_path / "videos")) == sorted(f"{i}.mp4" for i in ids)
