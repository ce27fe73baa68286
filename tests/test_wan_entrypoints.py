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
