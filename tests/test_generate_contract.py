"""The generate() contract every text-to-video family keeps: one flow (VideoSysPipeline.run_generation),
negative_prompt=None as the family's default, and the request checks (config.check_request) running on the
config's own values at construction and on a call's values before any weight loads or compute."""

import pytest
import torch

from conftest import PROMPT, tiny_config, tiny_pipeline
from videosys.core.config import RequestError
from videosys.core.engine import VideoSysEngine

FAST = dict(num_inference_steps=4, seed=1)  # v1.1's PNDM needs 4 steps at least
# family (videosys.models name) + config fields -> a small run, and a size each family refuses, named
FAMILIES = {
    "latte": (dict(), dict(num_frames=2, height=32, width=32), dict(height=60)),
    "cogvideox": (dict(), dict(num_frames=1, height=32, width=32), dict(num_frames=10)),
    "open-sora": (dict(), dict(num_frames=1, height=32, width=32), dict(height=4)),
    "open-sora-plan": (dict(), dict(num_frames=1, height=32, width=32), dict(width=72)),
    "open-sora-plan-v110": (dict(version="v110"), dict(num_frames=1, height=32, width=32), dict(num_frames=8)),
    "hunyuanvideo-1.5": (dict(), dict(num_frames=1, height=32, width=32), dict(num_frames=6)),
    "lavie": (dict(), dict(num_frames=2, height=32, width=32), dict(height=36)),
}


def family(name: str) -> str:
    return "open-sora-plan" if name.startswith("open-sora-plan") else name


@pytest.fixture(scope="module")
def pipelines():
    return {name: tiny_pipeline(family(name), **fields) for name, (fields, _, _) in FAMILIES.items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_negative_prompt_none_is_the_familys_default(pipelines, name):
    pipeline, (_, run, _) = pipelines[name], FAMILIES[name]
    default = pipeline.config.default_negative_prompt()
    assert default == getattr(pipeline.config, "negative_prompt", "")  # Open-Sora-Plan v1.2: the release's
    none = pipeline.generate(PROMPT, negative_prompt=None, **FAST, **run)
    given = pipeline.generate(PROMPT, negative_prompt=default, **FAST, **run)
    assert torch.equal(none.latents, given.latents)
    with pytest.raises(ValueError, match="negative_prompt"):
        pipeline.generate(PROMPT, negative_prompt=["x"], **FAST, **run)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bad_size_refused_at_config_construction(name):
    fields, _, bad = FAMILIES[name]
    with pytest.raises(RequestError, match=next(iter(bad))) as err:
        tiny_config(family(name), **fields, **bad)
    assert err.value.field == next(iter(bad))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bad_size_refused_before_any_compute(pipelines, name, monkeypatch):
    """A call's override goes through the same check before the text encoder (or anything) runs."""
    pipeline, (_, run, bad) = pipelines[name], FAMILIES[name]

    def no_compute(*args, **kwargs):
        raise AssertionError("the request should have been refused before any compute")

    monkeypatch.setattr(pipeline, "encode_prompt", no_compute)
    monkeypatch.setattr(pipeline, "prepare_run", no_compute)
    with pytest.raises(RequestError, match=next(iter(bad))):
        pipeline.generate(PROMPT, **FAST, **{**run, **bad})


@pytest.mark.parametrize("name", ["latte", "cogvideox", "open-sora-plan"])
def test_engine_refuses_a_bad_size_before_dispatch(name, monkeypatch):
    fields, run, bad = FAMILIES[name]
    config = tiny_config(family(name), **fields)

    def no_weights(config):
        raise AssertionError("no weights should load for a refused config")

    monkeypatch.setattr(config.pipeline_cls, "from_config", classmethod(lambda cls, c: no_weights(c)))
    with pytest.raises(RequestError):  # the config itself refuses: nothing loads
        VideoSysEngine(tiny_config(family(name), **fields, **bad))
    monkeypatch.undo()
    engine = VideoSysEngine(config)
    monkeypatch.setattr(engine, "_run", lambda *a, **k: no_weights(None))  # nothing reaches the ranks
    with pytest.raises(RequestError, match=next(iter(bad))):
        engine.generate(PROMPT, **FAST, **{**run, **bad})
    engine.shutdown()


def test_check_request_resolves_and_names_fields():
    config = tiny_config("open-sora")
    values = config.check_request({"resolution": "144p", "aspect_ratio": "9:16", "num_frames": "2s"})
    assert (values["height"], values["width"], values["num_frames"]) == (144, 256, 51)
    assert values["negative_prompt"] == "" and values["num_inference_steps"] == config.num_inference_steps
    for bad, field in ((dict(resolution="1080x"), "resolution"), (dict(mask_strategy="0,x"), "mask_strategy"),
                       (dict(loop=0), "loop"), (dict(aes="high"), "aes"), (dict(reference="a.txt"), "reference"),
                       (dict(negative_prompt=3), "negative_prompt"), (dict(guidance_scale=-1.0), "guidance_scale")):
        with pytest.raises(RequestError) as err:
            config.check_request(bad)
        assert err.value.field == field, (bad, err.value)


def test_run_stats_are_per_pipeline():
    a = tiny_pipeline("latte", freeinit_iters=2)
    out = a.generate(PROMPT, num_frames=2, height=32, width=32, num_inference_steps=2)
    assert "freeinit" in out.stats
    b = tiny_pipeline("latte")
    assert b.run_stats == {} and "freeinit" not in b.generate(PROMPT, num_frames=2, height=32, width=32,
                                                              num_inference_steps=2).stats


def test_grid_factors_come_from_a_local_checkpoints_configs(tmp_path):
    """No weights load for the checks: a local folder's config.json files give the factors (here a
    2x-downsampling VAE and patch size 1: a 2-pixel grid; CogVideoX's 2x temporal VAE: 4k + 1 frames)."""
    import json

    from videosys import LatteConfig
    from videosys.models.cogvideox.pipeline import CogVideoXConfig

    for part, values in (("transformer", {"patch_size": 1}),
                         ("vae", {"block_out_channels": [8, 8], "temporal_compression_ratio": 2})):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(json.dumps(values))
    assert LatteConfig(model_path=str(tmp_path), height=34, width=34).height == 34
    with pytest.raises(RequestError, match="divisible by 16"):
        LatteConfig(height=34)  # the release's grid (the hub id is not a local folder)
    assert CogVideoXConfig(model_path=str(tmp_path), num_frames=5, height=34, width=34).num_frames == 5
    with pytest.raises(RequestError, match="8k \\+ 1"):
        CogVideoXConfig(num_frames=5)
