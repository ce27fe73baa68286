"""A generate() call's arguments are checked before any compute and the error names the argument: the seed,
the prompt (type, bytes, text that is not UTF-8), sizes and unknown keywords; in the pipeline and in the
engine before it dispatches (with workers, a worker's error would come back mid-call, from another process)."""

import numpy as np
import torch
import pytest

from conftest import PROMPT, tiny_config, tiny_pipeline
from videosys.core.config import RequestError
from videosys.core.engine import VideoSysEngine

RUN = dict(num_frames=2, height=32, width=32, num_inference_steps=2)


def nothing_runs(*args, **kwargs):
    raise AssertionError("the call should have been refused before any compute")


@pytest.fixture(scope="module")
def engine():
    engine = VideoSysEngine(tiny_config("latte"))
    yield engine
    engine.shutdown()


BAD = [  # (args, kwargs, field, message)
    ((PROMPT,), dict(seed="x"), "seed", "seed must be an integer, got 'x'"),
    ((PROMPT,), dict(seed=True), "seed", "seed must be an integer"),
    ((PROMPT,), dict(seed=1.5), "seed", "seed must be an integer"),
    ((123,), {}, "prompt", "prompt must be a non-empty string"),
    ((b"a red circle",), {}, "prompt", "prompt must be a non-empty string"),
    ((["ok", b"x"],), {}, "prompt", "prompt must be a non-empty string"),
    (("a red \udcff circle",), {}, "prompt", "cannot be encoded as UTF-8"),
    ((PROMPT,), dict(height=-64), "height", "height must be"),
    ((PROMPT,), dict(height=72), "height", "height=72 must be divisible by 16"),  # Latte's size grid
    (("  ",), {}, "prompt", "prompt must be a non-empty string"),
]


@pytest.mark.parametrize("args, kwargs, field, message", BAD)
def test_engine_refuses_before_dispatch(engine, monkeypatch, args, kwargs, field, message):
    monkeypatch.setattr(engine, "_run", nothing_runs)
    with pytest.raises(RequestError, match=message) as err:
        engine.generate(*args, **RUN | kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("args, kwargs, field, message", BAD)
def test_pipeline_refuses_before_compute(engine, monkeypatch, args, kwargs, field, message):
    pipeline = engine.pipeline
    monkeypatch.setattr(pipeline, "encode_prompt", nothing_runs)
    monkeypatch.setattr(pipeline, "prepare_run", nothing_runs)
    with pytest.raises(RequestError, match=message) as err:
        pipeline.generate(*args, **RUN | kwargs)
    assert err.value.field == field


def test_unknown_keyword_names_the_allowed_ones(engine, monkeypatch):
    monkeypatch.setattr(engine, "_run", nothing_runs)
    with pytest.raises(RequestError, match="unknown argument 'guidance'; allowed: negative_prompt, seed, .*"
                                           "guidance_scale") as err:
        engine.generate(PROMPT, guidance=5, **RUN)
    assert err.value.field == "guidance"


def test_a_config_that_cannot_run_is_refused_when_built():
    from videosys import CogVideoXConfig

    with pytest.raises(RequestError, match="num_frames=10 must be 8k \\+ 1") as err:
        CogVideoXConfig(preset="tiny", num_frames=10)
    assert err.value.field == "num_frames"


def test_skipcache_without_skip_branches_is_refused_before_weights_load(no_engine, capsys):
    from videosys import cli

    assert cli.main(["generate", "--model", "latte", "--preset", "tiny", "--cache", "skipcache", "--prompt", PROMPT,
                     "--output", "/tmp/videosys-never-written.mp4"]) == 2
    _one_line_error(capsys, "Skip-Cache needs a model with Skip-DiT skip branches; latte (tiny) has none")
    tiny_config("latte", preset="tiny-skip", cache="skipcache")  # the Skip-DiT preset has them


def test_numpy_seed_is_an_int(engine):
    a = engine.generate(PROMPT, seed=np.int64(3), **RUN)
    b = engine.generate(PROMPT, seed=3, **RUN)
    assert (a.latents == b.latents).all()


def test_cli_says_which_argument_in_one_line(capsys):
    from videosys import cli

    assert cli.main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "a \udcff",
                     "--output", "/tmp/videosys-never-written.mp4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videosys: error: prompt is not valid text") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("model", ["latte", "cogvideox", "open-sora", "open-sora-plan", "wan", "hunyuanvideo-1.5"])
def test_a_prompt_past_the_token_limit_warns_once_with_the_count(model):
    pipeline = tiny_pipeline(model)
    limit = pipeline.config.max_text_length if hasattr(pipeline.config, "max_text_length") else None
    words = "a red circle moving to the right " * 200
    with pytest.warns(UserWarning, match=r"prompt is \d+ tokens, more than the text encoder's limit of \d+: "
                                         r"the last \d+ tokens are cut") as record:
        pipeline.encode_prompt([words], "", do_cfg=True)
    cut = [w for w in record if "tokens are cut" in str(w.message)]
    assert len(cut) == 1 and str(cut[0].message).startswith("prompt is ")
    if limit is not None:
        assert f"limit of {limit}:" in str(cut[0].message)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a short prompt: no warning (tiny HunyuanVideo-1.5 takes 48 bytes of chat)
        pipeline.encode_prompt(["a red circle"], "", do_cfg=True)


# ---- files: outputs writable, inputs probed, parse errors naming the file and line --------------------------
@pytest.fixture
def no_engine(monkeypatch):
    """The CLI's engine replaced by one that fails the test if built: a refusal must come before any weight loads."""
    import videosys.core.engine

    monkeypatch.setattr(videosys.core.engine, "VideoSysEngine", nothing_runs)


def _one_line_error(capsys, *names) -> str:
    err = capsys.readouterr().err
    assert err.startswith("videosys") and err.count("\n") == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, err
    return err


@pytest.fixture
def notes(tmp_path):
    """A text file that ffmpeg reads as a 65-frame video (its tty demuxer renders text as ANSI art)."""
    path = tmp_path / "notes.txt"
    path.write_text("".join(f"line {i} of my notes about the project\n" for i in range(400)))
    return str(path)


def test_output_in_an_unwritable_folder_is_refused_before_weights_load(no_engine, capsys):
    from videosys import cli

    assert cli.main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", PROMPT,
                     "--output", "/proc/x.mp4"]) == 2
    _one_line_error(capsys, "/proc/x.mp4", "cannot write in '/proc'")


def test_reconstruct_refuses_a_text_file_before_weights_load(no_engine, notes, capsys):
    from videosys import cli

    assert cli.main(["reconstruct", "--preset", "tiny", "--input", notes, "--output", "/tmp/never.mp4"]) == 2
    _one_line_error(capsys, notes, "not a video")


def test_cascadev_pipeline_probes_its_input(notes):
    from videosys.models.cascadev.pipeline import CascadeVPipeline

    with pytest.raises(ValueError, match="is not a video"):
        CascadeVPipeline.load_input(None, notes)


@pytest.mark.parametrize("model, field, request_values", [
    ("open-sora", "reference", lambda path: {"reference": path}),
    ("wan", "image", lambda path: {"image": path}),
    ("hunyuanvideo-1.5", "image", lambda path: {"image": path}),
])
def test_a_reference_that_is_not_an_image_is_refused_naming_it(tmp_path, model, field, request_values):
    path = tmp_path / "first.png"
    path.write_text("not an image")
    config = tiny_config(model, **({} if model == "open-sora" else {"preset": "tiny-i2v"}))
    with pytest.raises(RequestError, match=f"{field} '{path}' is not an image") as err:
        config.check_request(request_values(str(path)))
    assert err.value.field == field


def test_open_sora_video_reference_is_probed(notes, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 100)  # a truncated download
    with pytest.raises(RequestError, match=f"reference '{clip}' is not a video file") as err:
        tiny_config("open-sora").check_request({"reference": str(clip)})
    assert err.value.field == "reference"


@pytest.mark.parametrize("text, where", [
    ("num_frames: 2\nheight: [32\n", "line 3, column 1: not valid YAML"),
    ("num_frames: 2\n  height: 32\n", "line 2, column 9: not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_cli_malformed_yaml_names_the_file_and_line(no_engine, tmp_path, capsys, text, where):
    from videosys import cli

    path = tmp_path / "latte.yaml"
    path.write_text(text)
    assert cli.main(["generate", "--model", "latte", "--config", str(path), "--prompt", PROMPT,
                     "--output", str(tmp_path / "o.mp4")]) == 2
    _one_line_error(capsys, str(path), where)


def test_non_utf8_yaml_names_the_file_and_line(tmp_path):
    from videosys import LatteConfig

    path = tmp_path / "latte.yaml"
    path.write_bytes(b"preset: tiny\n# caf\xe9\n")
    with pytest.raises(ValueError, match=r"latte.yaml, line 2, column 6: not UTF-8 text \(byte 0xe9\)"):
        LatteConfig.from_yaml(str(path))


@pytest.fixture(scope="module")
def experiments():
    from eval_helpers import load_eval_module

    return load_eval_module("experiments/utils.py", "experiments_utils")


@pytest.mark.parametrize("name, data, message", [
    ("prompts.txt", b"a red circle\na caf\xe9 at night\n", r"prompts.txt, line 2, column 6: not UTF-8 text"),
    ("prompts.json", b'["a red circle",\n "a cat" "a dog"]', r"prompts.json, line 2, column 10: not valid JSON"),
    ("prompts.json", b'{"prompt_en": "a cat"}', r"prompts.json: a JSON prompts file is a list"),
])
def test_eval_prompts_file_that_does_not_decode_is_one_line(experiments, tmp_path, no_engine, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    family = experiments.Family("latte")
    with pytest.raises(SystemExit, match=message) as err:
        experiments.main(family, ["--preset", "tiny", "--prompts-file", str(path), "--output-dir", str(tmp_path / "s")])
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "s").exists()  # refused before any folder is made


def test_eval_output_dir_unwritable_is_refused(experiments, tmp_path, no_engine):
    with pytest.raises(SystemExit, match="--output-dir '/proc/samples': cannot write in '/proc'"):
        experiments.main(experiments.Family("latte"), ["--preset", "tiny", "--output-dir", "/proc/samples"])


def test_bench_coefficients_that_do_not_parse(no_engine, tmp_path, capsys):
    from videosys import cli

    path = tmp_path / "coefficients.json"
    path.write_text('{"coefficients": [1, 2,]}')
    assert cli.main(["bench", "--model", "latte", "--preset", "tiny", "--coefficients", str(path),
                     "--output", str(tmp_path / "b.json")]) == 2
    _one_line_error(capsys, str(path), "line 1, column 24: not valid JSON")


def test_bench_prompt_file_not_utf8(no_engine, tmp_path, capsys):
    from videosys import cli

    path = tmp_path / "prompts.txt"
    path.write_bytes(b"a red circle\n\xff\xfe\n")
    assert cli.main(["bench", "--model", "latte", "--preset", "tiny", "--prompt-file", str(path),
                     "--output", str(tmp_path / "b.json")]) == 2
    _one_line_error(capsys, str(path), "line 2, column 1: not UTF-8 text (byte 0xff)")


def test_eval_json_that_does_not_parse_names_the_file(tmp_path, capsys):
    from eval_helpers import load_eval_module

    plot = load_eval_module("plot_frontier.py", "videosys_eval_plot_frontier")
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "stats.json").write_text('{"videos": {\n  "a-0.mp4": {"total_s": 1.0,}\n}}')
    assert plot.main(["--family-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path}/baseline/stats.json, line 2, column 30: not valid JSON" in err


def test_serve_job_store_that_is_not_one_names_the_file(tmp_path):
    from videosys.serve.jobs import JobStore

    (tmp_path / "jobs.sqlite3").write_text('{"id": "x", "state": }' * 100)
    with pytest.raises(ValueError, match=r"jobs.sqlite3: not a videosys job store \(file is not a database\)"):
        JobStore(str(tmp_path))


def test_serve_output_dir_unwritable_is_refused_before_weights_load(no_engine, capsys):
    from videosys import cli

    assert cli.main(["serve", "--model", "latte", "--preset", "tiny", "--output-dir", "/proc/jobs"]) == 2
    _one_line_error(capsys, "--output-dir '/proc/jobs'")


# ---- sizes the machine cannot hold ----------------------------------------------------------------------
def test_a_size_that_cannot_fit_is_refused_before_dispatch_naming_it(engine, monkeypatch):
    monkeypatch.setattr(engine, "_run", nothing_runs)
    with pytest.raises(RequestError, match=r"num_frames=100000000: a 100000000x32x32 video needs an estimated "
                                           r"[\d.]+ TB of memory at least .* more than the [\d.]+ [GMT]B available "
                                           r"on cpu") as err:
        engine.generate(PROMPT, **RUN | dict(num_frames=100_000_000))
    assert err.value.field == "num_frames"
    with pytest.raises(RequestError) as err:
        engine.generate(PROMPT, **RUN | dict(width=10_000_000))
    assert err.value.field == "width"


def test_cli_refuses_it_before_weights_load(monkeypatch, capsys):
    from videosys import cli
    from videosys.models.latte.pipeline import LattePipeline

    monkeypatch.setattr(LattePipeline, "from_config", nothing_runs)  # the engine checks before building it
    assert cli.main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", PROMPT, "--num-frames",
                     "100000000", "--output", "/tmp/videosys-never-written.mp4"]) == 2
    _one_line_error(capsys, "num_frames=100000000", "needs an estimated")


def test_the_pipeline_refuses_it_too(engine, monkeypatch):
    monkeypatch.setattr(engine.pipeline, "encode_prompt", nothing_runs)
    with pytest.raises(RequestError, match="num_frames=100000000"):
        engine.pipeline.generate(PROMPT, **RUN | dict(num_frames=100_000_000))


def test_the_estimate_counts_video_latents_and_the_widest_activation():
    from videosys.core.memory import estimate_peak_bytes

    config = tiny_config("latte")
    parts = estimate_peak_bytes(config, dict(num_frames=16, height=512, width=512, guidance_scale=7.5),
                                torch.nn.Linear(8, 4608, device="meta"))
    pixels = 16 * 512 * 512
    assert parts["decoded video"] == pixels * 3 * 9
    assert parts["latents"] == 16 * 4 * 64 * 64 * 8
    assert parts["activations"] == 2 * 16 * 32 * 32 * 4608 * 4  # CFG's two branches, fp32
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert estimate_peak_bytes(config, dict(num_frames=None, height=None, width=None)) == {}  # a reconstruction


def test_published_defaults_fit_a_big_gpu():
    """Wan 2.1 14B's published 81x480x832 (its MLP is 13824 wide, bf16) on an 80 GB GPU: the estimate is far
    below it (a lower bound: it never refuses what fits)."""
    from videosys.core.memory import estimate_peak_bytes

    config = tiny_config("wan", preset=None, dtype="bf16", device="cpu")
    parts = estimate_peak_bytes(config, dict(num_frames=81, height=480, width=832, guidance_scale=5.0),
                                torch.nn.Linear(8, 13824, device="meta"))
    assert parts["total"] < 10 * 2 ** 30


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from videosys.serve.app import create_app

    with TestClient(create_app(engine, str(tmp_path_factory.mktemp("serve")))) as client:
        yield client


def test_http_size_that_cannot_fit_is_a_422_naming_the_field(client):
    response = client.post("/v1/videos", json={"model": "latte", "prompt": PROMPT, "num_frames": 100_000_000})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "num_frames" and "needs an estimated" in error["message"]
    assert client.get("/v1/videos").json()["data"] == []  # no job was queued


# ---- Open-Sora's loop ------------------------------------------------------------------------------------
def test_open_sora_loop_without_room_is_refused_with_the_frames_it_needs():
    with pytest.raises(RequestError, match=r"condition_frame_length=5 leaves nothing new to generate in a clip of 5 "
                                           r"latent frames: with loop=2, give num_frames=34 or more") as err:
        tiny_config("open-sora").check_request({"loop": 2})
    assert err.value.field == "condition_frame_length"
    tiny_config("open-sora").check_request({"loop": 2, "num_frames": 34})  # room: accepted


def test_open_sora_example_says_it_in_one_line_before_weights_load(monkeypatch, capsys):
    import os
    import runpy
    import sys

    import videosys

    monkeypatch.setattr(videosys, "VideoSysEngine", nothing_runs)  # what the example imports
    monkeypatch.setattr(sys, "argv", ["sample.py", "--loop", "2", "--num-frames", "17"])
    example = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples", "open_sora", "sample.py")
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(example, run_name="__main__")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.rstrip().splitlines()[-1].endswith(
        "condition_frame_length=5 leaves nothing new to generate in a clip of 5 latent frames: with loop=2, give "
        "num_frames=34 or more (or fewer condition frames)")


# ---- the noise a user sees ---------------------------------------------------------------------------------
def test_warnings_point_at_the_callers_line(engine):
    """Through the engine, the pipeline's inference_mode wrapper (torch's contextlib) and our frames: the
    warning names this file, the line that called generate()."""
    import inspect

    with pytest.warns(UserWarning, match="tokens are cut") as record:
        line = inspect.currentframe().f_lineno + 1
        engine.generate("a red circle moving to the right " * 200, **RUN)
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def test_demo_vocabulary_warning_points_at_the_caller():
    import inspect

    pipeline = tiny_pipeline("latte", preset="demo")
    with pytest.warns(UserWarning, match="knows only the words") as record:
        line = inspect.currentframe().f_lineno + 1
        pipeline.generate("a zebra running", **RUN)
    assert (record[0].filename, record[0].lineno) == (__file__, line)


@pytest.mark.slow
def test_multi_process_run_ends_quietly_and_ctrl_c_is_one_line(tmp_path):
    """`videosys generate` on two processes: a finished run leaves no `leaked semaphore objects` report; Ctrl-C
    (SIGINT to the whole process group, as a terminal sends it) mid-generation ends with one line and status 130,
    no traceback from any rank."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    def start(steps: int, progress: bool, size: str = "32"):
        cmd = [sys.executable, "-m", "videosys.cli", "generate", "--model", "latte", "--preset", "tiny",
               "--prompt", PROMPT, "--set", "num_gpus=2", "--num-frames", "2", "--height", size, "--width", size,
               "--steps", str(steps), "--output", str(tmp_path / "o.mp4"), *([] if progress else ["--no-progress"])]
        env = dict(os.environ, OMP_NUM_THREADS="1", VIDEOSYS_ALLOW_OVERSUBSCRIBE="1")
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)

    done = start(2, progress=False)
    out, err = done.communicate(timeout=300)  # EOF once every process holding the pipes (tracker too) has exited
    assert done.returncode == 0, err.decode()
    assert b"leaked semaphore" not in err and b"Traceback" not in err, err.decode()

    # DDIM's most steps (1000), at a size where they take a minute or more: the run cannot end before the Ctrl-C
    # (at 32x32 an idle machine finished all 1000 before it arrived)
    run = start(1000, progress=True, size="128")
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: run.stderr.read(1), b"")), daemon=True)
    reader.start()
    end = time.monotonic() + 300
    while b"latte:" not in b"".join(chunks) and time.monotonic() < end:  # the denoising loop has started
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGINT)
    try:
        assert run.wait(timeout=120) == 130
    finally:
        if run.poll() is None:  # Ctrl-C ignored: do not leave the ranks running
            os.killpg(run.pid, signal.SIGKILL)
    reader.join(timeout=60)
    err = b"".join(chunks).decode(errors="replace")
    assert "Traceback" not in err and "leaked semaphore" not in err, err
    assert err.rstrip().splitlines()[-1].endswith("videosys: interrupted")
