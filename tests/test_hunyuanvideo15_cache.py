"""HunyuanVideo-1.5 and the caches: the published settings (MagCache for the T2V checkpoints, from the authors'
ComfyUI node), and every registered method that applies running on the tiny pipeline and reporting its stats
(as tests/test_family_contract.py's toy family)."""

import pytest
import torch

from videosys.models.hunyuanvideo15 import cache_settings

from conftest import applicable_methods, tiny_pipeline

MODEL = "hunyuanvideo-1.5"
HUB = "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-"
PROMPT = 'a red sign that reads "OPEN"'
PAB_SPEC = {"method": "pab", "spatial": ((100, 900), 2), "cross": None, "temporal": None}  # joint attention: "full"


def config(name: str, **fields):
    from videosys.models import config_class

    return config_class(MODEL)(model_path=HUB + name, **fields)


def test_magcache_is_published_for_the_t2v_checkpoints_only():
    for name in ("480p_t2v", "720p_t2v"):
        cache = config(name, cache="magcache").cache_configs()[0]
        assert (cache.threshold, cache.max_skip_steps, cache.retention_ratio) == (0.06, 2, 0.2)
        assert len(cache.ratios) == 40 and cache.ratios[0] == 1.0
        # each step's ratio: the mean of the authors' two CFG-branch entries
        assert cache.ratios[1] == pytest.approx((1.04199 + 1.01953) / 2)
    assert len(cache_settings.MAGCACHE_20) == 20
    for name in ("480p_i2v", "720p_i2v", "480p_i2v_step_distilled", "480p_t2v_distilled"):
        assert config(name).published_cache_settings() == {}
        with pytest.raises(ValueError, match="--method magcache --model hunyuanvideo-1.5"):  # asks for a calibration
            config(name, cache="magcache")
    with pytest.raises(ValueError, match="calibrat"):  # no HunyuanVideo-1.5 TeaCache polynomial is published
        config("480p_t2v", cache="teacache")


def test_every_method_that_applies_generates_and_reports():
    pipe = tiny_pipeline(MODEL)
    methods = applicable_methods(pipe)
    # nothing published for the tiny model: the methods needing numbers refuse (TeaCache's polynomial, MagCache's
    # ratios, PAB's windows, FasterCache's schedules), Skip-Cache needs skip branches, DeepCache a UNet
    assert {name for name, c in methods.items() if c is None} == {"teacache", "magcache", "pab", "fastercache",
                                                                  "skipcache", "deepcache"}
    runnable = [name for name, c in methods.items() if c is not None]
    runnable += ["fastercache-diffusers", PAB_SPEC, {"method": "teacache", "coefficients": (1.0, 0.0)},
                 {"method": "magcache", "ratios": cache_settings.MAGCACHE_T2V["ratios"], "threshold": 0.5}]
    base = pipe.generate(PROMPT, seed=2)
    assert base.video.shape == (1, 5, 48, 80, 3) and base.stats["steps"] == 8
    reused = {}
    for spec in runnable:
        pipe.set_cache(spec)
        name = next(iter(pipe.transformer.caches))
        out = pipe.generate(PROMPT, seed=2)
        assert out.video.shape == base.video.shape and torch.isfinite(out.latents).all(), name
        assert out.stats[name], name
        reused[name] = not torch.equal(out.latents, base.latents)
    pipe.set_cache(None)
    assert torch.equal(pipe.generate(PROMPT, seed=2).latents, base.latents)
    assert sum(reused.values()) >= 4, reused
