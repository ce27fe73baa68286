"""TeaCache calibration (videosys/cache/calibrate.py, scripts/calibrate_teacache.py): the recorded points
are the distances between consecutive calls, the fit is numpy's, and the result drives TeaCache."""

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from eval_helpers import load_script  # tests/eval_helpers.py

from videosys.cache import TeaCacheConfig
from videosys.cache.calibrate import calibrate, fit
from videosys.cache.teacache import relative_l1

PROMPTS = ["a red circle moving to the right", "a blue square moving up"]
SHORT = {"num_frames": 4, "num_inference_steps": 6}


def test_fit_recovers_a_known_polynomial():
    truth = (30.0, -12.0, 2.5, 0.4, 0.01)
    x = np.linspace(0.01, 0.3, 40)
    assert np.allclose(fit(x, np.poly1d(truth)(x)), truth, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="more than 4 points"):
        fit(x[:4], x[:4])


def test_r2_scores_a_polynomial_as_teacache_evaluates_it():
    from videosys.cache.calibrate import Calibration

    # -x^2 + 0.4x peaks at x = 0.2 (value 0.04); TeaCache holds it there beyond the peak
    result = Calibration((-1.0, 0.4, 0.0), np.array([0.1, 0.3]), np.array([0.03, 0.04]))
    assert result.r2() == pytest.approx(1.0)
    assert result.r2((0.0, 0.0, 0.035)) == pytest.approx(0.0)  # the mean of y: R^2 0 by definition


def test_calibrate_records_consecutive_changes_and_restores_caches(tiny_latte):
    transformer = tiny_latte.transformer
    transformer.enable_cache(TeaCacheConfig(threshold=0.3, coefficients=(1.0,)))
    cache_before = transformer.active_cache("teacache")
    outputs = []
    handle = transformer.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
    try:
        result = calibrate(tiny_latte, PROMPTS, seeds=[0, 1], progress=False, **SHORT)
    finally:
        handle.remove()
    assert transformer.active_cache("teacache") is cache_before  # put back
    assert len(result.x) == len(result.y) == 4 * (SHORT["num_inference_steps"] - 1)  # 4 videos, no cross-video pair
    per_video = [outputs[i:i + 6] for i in range(0, 24, 6)]
    expected = [float(relative_l1(b, a)) for video in per_video for a, b in zip(video, video[1:])]
    assert np.allclose(result.y, expected, rtol=1e-6)  # what the hook recorded, computed independently
    assert np.all(result.x > 0) and np.all(np.isfinite(result.x))
    assert np.allclose(result.coefficients, np.polyfit(result.x, result.y, 4))
    assert result.r2() >= result.r2((0.0, 0.0, 0.0, 0.0, float(result.y.mean()))) - 1e-9  # least squares
    # the recorder never skips: the video is the uncached one
    transformer.disable_cache()
    plain = tiny_latte.generate(PROMPTS[0], seed=0, **SHORT)
    transformer.disable_cache()
    again = calibrate(tiny_latte, PROMPTS[:1], progress=False, **SHORT)
    assert np.allclose(again.y, result.y[:5]) and torch.equal(tiny_latte.generate(PROMPTS[0], seed=0, **SHORT).video,
                                                              plain.video)


def test_scripts_calibrate_then_bench_with_the_coefficients(tmp_path):
    calib = load_script("calibrate_teacache")
    out = tmp_path / "coefficients.json"
    assert calib.main(["--preset", "tiny", "--prompt-set", "builtin", "--prompts", "2", "--steps", "8",
                       "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["points"] == 2 * 7 == len(report["x"]) and len(report["coefficients"]) == 5
    assert report["published"] == "latte" and report["published_r2"] is not None

    from videosys.eval import bench

    with pytest.raises(ValueError, match="needs --coefficients"):
        bench.cache_spec("teacache-cal-0.1")
    with pytest.raises(ValueError, match="must be a number"):
        bench.cache_spec("teacache-cal-slow", [1.0])
    spec = bench.cache_spec("teacache-cal-0.25", report["coefficients"])
    assert spec == {"method": "teacache", "threshold": 0.25, "coefficients": report["coefficients"]}
    constant = tmp_path / "constant.json"  # rescaled distance 1 per step, whatever the model does
    constant.write_text(json.dumps({"coefficients": [0, 0, 0, 0, 1.0]}))
    frontier = tmp_path / "frontier.json"
    assert bench.main(["--preset", "tiny", "--prompt-set", "builtin", "--prompts", "1", "--steps", "8",
                       "--repeats", "1", "--coefficients", str(constant), "--variants", "none", "teacache-cal-2.5",
                       "--output", str(frontier)]) == 0
    row = json.loads(frontier.read_text())["results"]["teacache-cal-2.5"]
    # accumulated 1, 2 (reuse), 3 >= 2.5 (compute): steps 0, 3, 6 and the last one computed
    tea = row["caches"]["teacache"]
    assert tea["computed_steps"] == 4 and tea["reused_step_indices"] == [1, 2, 4, 5]


def test_magcache_ratios_are_the_stack_residual_norm_ratios(tiny_latte):
    """calibrate_magcache: per step, mean over tokens of |r_i| / |r_{i-1}| of the whole stack's residual,
    averaged over the videos; checked against residuals recorded independently at the same hook point."""
    from videosys.cache import Cache, register
    from videosys.cache.calibrate import calibrate_magcache
    from videosys.cache.magcache import MagCacheConfig

    @dataclass
    class ResidualsConfig:
        pass

    class Residuals(Cache):
        def __init__(self, config):
            self.seen = []

        def stack(self, stack):
            out = stack.run(*stack.streams)
            self.seen.append(out[0] - stack.streams[0])
            return out

    from videosys.cache.registry import unregister

    register("test-residuals", ResidualsConfig, Residuals, for_model=lambda models: ResidualsConfig())
    try:  # registered for this test only: later tests list every registered method
        transformer = tiny_latte.transformer
        transformer.disable_cache()
        transformer.enable_cache(ResidualsConfig())
        for prompt in PROMPTS:
            tiny_latte.generate(prompt, seed=0, **SHORT)
        seen = transformer.active_cache("test-residuals").seen
        transformer.disable_cache()
    finally:
        unregister("test-residuals")
    n = SHORT["num_inference_steps"]
    per_video = (seen[:n], seen[n:])
    expected = [1.0] + [np.mean([float((v[i].norm(dim=-1) / v[i - 1].norm(dim=-1)).mean()) for v in per_video])
                        for i in range(1, n)]
    ratios = calibrate_magcache(tiny_latte, PROMPTS, progress=False, **SHORT)
    assert np.allclose(ratios, expected, rtol=1e-5) and len(ratios) == n
    assert not transformer.caches  # put back (none were on)
    # the ratios drive MagCache on this model (a budget large enough to skip on the tiny random model)
    tiny_latte.set_cache(MagCacheConfig(ratios=ratios, threshold=10.0, max_skip_steps=1))
    out = tiny_latte.generate(PROMPTS[0], seed=0, **SHORT)
    # retention round(0.2 * 6) = 1 computed step, then K = 1: every other step reused
    assert out.stats["magcache"]["reused_step_indices"] == [1, 3, 5]
    tiny_latte.set_cache(None)


def test_script_records_magcache_ratios(tmp_path):
    out = tmp_path / "ratios.json"
    args = ["--method", "magcache", "--preset", "tiny", "--prompt-set", "builtin", "--prompts", "1", "--steps", "5"]
    assert load_script("calibrate_teacache").main(args + ["--output", str(out)]) == 0
    ratios = json.loads(out.read_text())["ratios"]
    assert len(ratios) == 5 and ratios[0] == 1.0 and all(r > 0 for r in ratios[1:])
