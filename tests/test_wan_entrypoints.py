"""Wan through the user's entry points: the CLI (an image as a config field), `videosys bench`, the server's
request checks (422 before any weights load: a bad size, an I2V request without its image)."""

import json

import numpy as np
import pytest

from conftest import PROMPT, tiny_config


@pytest.fixture(scope="module")
def first_frame(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("wan") / "first.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 60, 3)).astype(np.uint8)).save(path)
    return str(path)


def test_cli_generates_text_and_image_to_video(tmp_path, first_frame, capsys):
    from videosys.cli import main
    from videosys.utils.video import read_video

    out = tmp_path / "i2v.mp4"
    assert main(["generate", "--model", "wan", "--preset", "tiny-i2v", "--prompt", PROMPT, "--set",
                 f"image={first_frame}", "--no-progress", "--output", str(out)]) == 0
    frames, fps = read_video(str(out))
    assert frames.shape == (9, 32, 48, 3) and fps == 16
    assert main(["generate", "--model", "wan", "--preset", "tiny-i2v", "--prompt", PROMPT,
                 "--output", str(tmp_path / "bad.mp4")]) != 0
    assert "give image=" in capsys.readouterr().err and not (tmp_path / "bad.mp4").exists()


def test_bench_runs_on_the_tiny_preset(tmp_path):
    from videosys.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "--model", "wan", "--preset", "tiny", "--prompt-set", "builtin", "--prompts", "1",
                 "--steps", "6", "--variants", "none", "teacache-slow", "--repeats", "1", "--threads", "1",
                 "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == "wan" and {"none", "teacache-slow"} <= set(report["results"])


def test_server_refuses_bad_requests_before_any_weights_load():
    from videosys.serve.app import ApiError, RequestReader, generation_fields

    config = tiny_config("wan", preset="tiny-i2v")
    fields = generation_fields(config)
    assert {"image", "guidance_scale_2", "num_frames", "negative_prompt"} <= set(fields)
    reader = RequestReader(config, "wan", "none", max_upload=2 ** 20)
    for body, field in (({"height": 40}, "height"), ({"num_frames": 8}, "num_frames"), ({}, "input_reference"),
                        ({"image": "/no/such/file.png"}, "image")):  # a path is never read: refused as a field
        with pytest.raises(ApiError) as err:
            reader.values({"prompt": "a cat", **body}, None)
        assert err.value.param == field, body


def test_server_takes_the_first_frame_as_an_upload(tmp_path, first_frame):
    """input_reference, uploaded as OpenAI's client does (multipart): the served video is the engine's own with
    that image; without one, a 400 naming input_reference."""
    import time

    from fastapi.testclient import TestClient

    from videosys import VideoSysEngine
    from videosys.serve.app import create_app
    from videosys.utils.video import read_video

    with VideoSysEngine(tiny_config("wan", preset="tiny-i2v", num_inference_steps=2)) as engine:
        with TestClient(create_app(engine, str(tmp_path / "out"))) as client:
            missing = client.post("/v1/videos", json={"prompt": PROMPT}).json()["error"]
            assert missing["param"] == "input_reference" and "upload" in missing["message"]
            with open(first_frame, "rb") as f:
                video = client.post("/v1/videos", data={"prompt": PROMPT, "seed": "2"},
                                    files={"input_reference": ("first.png", f, "image/png")}).json()
            while video["status"] not in ("completed", "failed"):
                time.sleep(0.05)
                video = client.get(f"/v1/videos/{video['id']}").json()
            assert video["status"] == "completed", video["error"]
        served = read_video(str(tmp_path / "out" / "videos" / f"{video['id']}.mp4"))[0].astype(int)
        direct = engine.save_video(engine.generate(PROMPT, seed=2, image=first_frame).video[0],
                                   str(tmp_path / "direct.mp4"))
        assert np.abs(served - read_video(direct)[0].astype(int)).mean() < 0.5
