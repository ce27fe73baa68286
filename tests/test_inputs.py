"""A generate() call's arguments are checked before any compute and the error names the argument: the seed,
the prompt (type, bytes, text that is not UTF-8), sizes and unknown keywords; in the pipeline and in the
engine before it dispatches (with workers, a worker's error would come back mid-call, from another process)."""

import numpy as np
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


@pytest.mark.parametrize("model", ["latte", "cogvideox", "open-sora", "open-sora-plan", "wan"])
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
        warnings.simplefilter("error")  # a short prompt: no warning
        pipeline.encode_prompt([PROMPT], "", do_cfg=True)
