"""The caches on Wan: every registered method that applies runs on each tiny preset and reports; the published
settings reach the methods; Wan2.2 A14B's two experts keep separate state and the first low-noise step computes."""

import pytest
import torch

from conftest import PROMPT, tiny_config

from videosys.cache import METHODS

IMAGE = torch.randint(0, 256, (40, 60, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy()
PRESETS = {"tiny": None, "tiny-i2v": IMAGE, "tiny-a14b": None, "tiny-ti2v": IMAGE}


def wan(preset: str, **fields):
    config = tiny_config("wan", preset=preset, **fields)
    return config.pipeline_cls.from_config(config)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_method_that_applies_runs_and_reports(preset):
    pipe = wan(preset)
    image = PRESETS[preset]
    base = pipe.generate(PROMPT, seed=1, image=image)
    ran = []
    for name in METHODS:
        if name.endswith("-recorder") or name.startswith("test-"):  # calibration tools; other test files' methods
            continue
        try:
            pipe.set_cache(name)
        except ValueError:  # needs settings this release does not publish (PAB's windows, ...)
            continue
        out = pipe.generate(PROMPT, seed=1, image=image)
        assert out.video.shape == base.video.shape and torch.isfinite(out.latents).all(), name
        assert out.stats[name], name
        ran.append(name)
    published = pipe.config.published_cache_settings()
    assert "easycache" in ran and "fbcache" in ran
    assert ("teacache" in ran) == ("teacache" in published) and ("magcache" in ran) == ("magcache" in published)
    pipe.set_cache(None)
    assert torch.equal(pipe.generate(PROMPT, seed=1, image=image).latents, base.latents)


def test_published_settings_per_release(tmp_path):
    from videosys.models.wan.pipeline import WanConfig

    tea = WanConfig().published_cache_settings()["teacache"]
    assert tea["coefficients"][0] == -5.21862437e+04 and (tea["warmup_steps"], tea["final_steps"]) == (5, 0)
    e_mode = WanConfig(teacache_use_ret_steps=False).published_cache_settings()
    assert e_mode["teacache"]["coefficients"][0] == 2.39676752e+03 and e_mode["teacache"]["final_steps"] == 1
    assert e_mode["magcache"]["threshold"] == 0.12  # the other methods fall through to the release's own key
    i2v = WanConfig(model_path="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers").published_cache_settings()
    assert len(i2v["magcache"]["ratios"]) == 40 and i2v["easycache"] == dict(threshold=0.05, warmup=10)
    a14b = WanConfig(model_path="Wan-AI/Wan2.2-T2V-A14B-Diffusers").published_cache_settings()
    assert "teacache" not in a14b and "magcache" not in a14b  # none published: calibrate (one table per expert)
    ti2v = WanConfig(model_path="Wan-AI/Wan2.2-TI2V-5B-Diffusers")
    from PIL import Image

    Image.fromarray(IMAGE).save(tmp_path / "first.png")
    ti2v_i2v = WanConfig(model_path="Wan-AI/Wan2.2-TI2V-5B-Diffusers", image=str(tmp_path / "first.png"))
    t2v_ratios, i2v_ratios = (c.published_cache_settings()["magcache"]["ratios"] for c in (ti2v, ti2v_i2v))
    assert len(t2v_ratios) == len(i2v_ratios) == 50 and t2v_ratios != i2v_ratios


def test_teacache_modes_follow_the_authors_schedule():
    """use_ret_steps=True: the first 5 steps compute, nothing forced at the end; False: first and last."""
    pipe = wan("tiny", num_inference_steps=8)
    pipe.set_cache({"method": "teacache", "threshold": 100.0})  # reuse wherever allowed
    stats = pipe.generate(PROMPT, seed=0).stats["teacache"]
    assert stats["reused_step_indices"] == [5, 6, 7]
    e_mode = wan("tiny", num_inference_steps=8, teacache_use_ret_steps=False)
    assert e_mode.transformer.indicator_source == "e"
    e_mode.set_cache({"method": "teacache", "threshold": 100.0})
    assert e_mode.generate(PROMPT, seed=0).stats["teacache"]["reused_step_indices"] == [1, 2, 3, 4, 5, 6]


def test_two_experts_keep_separate_state():
    pipe = wan("tiny-a14b", num_inference_steps=8)
    pipe.set_cache({"method": "teacache", "threshold": 100.0, "coefficients": [1.0, 0.0], "warmup_steps": 1,
                    "final_steps": 0})
    high, low = pipe.experts
    assert high.active_cache("teacache") is not low.active_cache("teacache")
    out = pipe.generate(PROMPT, seed=0)
    stats = out.stats["teacache"]
    boundary = pipe.transformer.boundary_timestep
    timesteps = [float(t) for t in pipe.scheduler.timesteps]
    first_low = next(i for i, t in enumerate(timesteps) if t < boundary)
    assert 0 < first_low < len(timesteps)
    per_expert = stats["experts"]
    # each expert computes its own first step (no state from the other), then reuses
    assert per_expert["high"]["reused_step_indices"] == list(range(1, first_low))
    assert per_expert["low"]["reused_step_indices"] == list(range(first_low + 1, len(timesteps)))
    assert per_expert["low"]["computed_steps"] == 1 and per_expert["high"]["computed_steps"] == 1
    assert stats["computed_steps"] == 2 and stats["reused_steps"] == len(timesteps) - 2


@pytest.mark.parametrize("method", ["teacache", "magcache"])
def test_calibration_fits_one_table_per_expert_and_the_config_reads_it(method, tmp_path):
    from eval_helpers import load_script

    out = tmp_path / f"{method}.json"
    args = ["--model", "wan", "--preset", "tiny-a14b", "--prompt-set", "builtin", "--prompts", "2", "--steps", "12",
            "--method", method, "--output", str(out)]
    assert load_script("calibrate_teacache").main(args) == 0
    import json

    report = json.loads(out.read_text())
    key = "coefficients" if method == "teacache" else "ratios"
    high, low = (report["experts"][name][key] for name in ("high", "low"))
    assert high != low and len(high) == len(low) == (5 if method == "teacache" else 12)
    if method == "magcache":  # each expert's own steps (8 high-noise steps at shift 12, then 4), 1.0 elsewhere
        assert high[8:] == [1.0] * 4 and low[:9] == [1.0] * 9 and all(r != 1.0 for r in high[1:8] + low[9:])

    pipe = wan("tiny-a14b", cache_calibration=str(out), num_inference_steps=12)
    spec = {"method": "teacache", "threshold": 0.3} if method == "teacache" else "magcache-0.5"
    pipe.set_cache(spec)
    experts = pipe.experts
    got = [getattr(e.active_cache(method).config, key) for e in experts]
    assert got == [tuple(high), tuple(low)]
    stats = pipe.generate(PROMPT, seed=0).stats[method]
    assert set(stats["experts"]) == {"high", "low"}
