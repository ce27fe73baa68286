"""FoCa (videosys/cache/foca.py): the predictor-corrector by hand on a synthetic feature sequence (the recursive
step and the corrector, normalised and cache-dit's raw form), its schedule on a model, names. Every family,
interval 1 = uncached and sp=2 = one process: FoCa's rows in tests/test_cache_methods.py (NEVER / REUSING)."""

import pytest
import torch

from videosys.cache.foca import FoCa, FoCaConfig, Track, predict
from videosys.cache.hooks import Site
from videosys.cache.registry import choices, config_from_name, configs_from_spec, sweep_names

from conftest import PROMPT, published, tiny_pipeline

SQUARES = {s: float(s * s) for s in range(10)}  # F(s) = s^2: not a line, so the corrector matters


def value(x: float) -> torch.Tensor:
    return torch.tensor([x])


def run_module(config: FoCaConfig, steps: int, feature=SQUARES):
    """One module through FoCa.module over `steps` steps: its output per step and the steps that computed."""
    cache = FoCa(config)
    cache.begin([0.0] * steps)
    site, outs, computed = Site("mlp", "spatial", 0), [], []

    def compute():
        computed.append(cache.step)
        return value(feature[cache.step])

    for i in range(steps):
        cache.set_step(i, 0.0)
        outs.append(cache.module(site, compute).item())
    return outs, computed, cache


def test_predictor_corrector_by_hand():
    # interval 3, warm-up 3: full steps 0, 1, 2, 5, 8 (TaylorSeer's paper schedule); F = 0, 1, 4, ., ., 25, ., ., 64
    outs, computed, cache = run_module(FoCaConfig(interval=3, warmup=3), 9)
    assert computed == [0, 1, 2, 5, 8]
    # step 3: window (1, 4), anchors (1, 4): 2*4 - 1 = 7, correction 0.5 (3 - 3) = 0
    # step 4 (recursive: the window is (4, 7), 7 a forecast): 2*7 - 4 = 10, correction 0.5 (3 - 3) = 0
    # step 6: window (10, 25) [step 4's forecast, step 5's truth], anchors (4 @2, 25 @5): d_curr = 15,
    #   d_full = 21 / 3 = 7 per step: 2*25 - 10 = 40, corrected 40 + 0.5 (7 - 15) = 36
    # step 7 (recursive on 36): d_curr = 11: 2*36 - 25 = 47, corrected 47 + 0.5 (7 - 11) = 45
    assert outs == [0.0, 1.0, 4.0, 7.0, 10.0, 25.0, 36.0, 45.0, 64.0]
    assert cache.stats() == {"computed_modules": 5, "forecast_modules": 4, "forecast_step_indices": [3, 4, 6, 7]}
    assert cache.postfix() == "foca 4/9 forecast"
    # cache-dit's h = 1 form: d_full = 21 unnormalised. step 6: 40 + 0.5 (21 - 15) = 43; step 7: 2*43 - 25 = 61,
    # d_curr = 18: 61 + 0.5 (21 - 18) = 62.5 (an overshoot: the truth is 36, 49)
    raw, _, _ = run_module(FoCaConfig(interval=3, warmup=3, normalise=False), 9)
    assert raw[3:5] == [7.0, 10.0] and raw[6:8] == [43.0, 62.5]


def test_a_line_is_forecast_exactly_and_a_short_history_falls_back():
    line = {s: 3.0 + 2.0 * s for s in range(12)}
    outs, computed, _ = run_module(FoCaConfig(interval=4, warmup=2), 12, line)
    assert computed == [0, 1, 5, 9] and outs == [line[s] for s in range(12)]
    raw, _, _ = run_module(FoCaConfig(interval=4, warmup=2, normalise=False), 7, line)
    # anchors 1 and 5: d_full = 8 unnormalised, d_curr = 2: 2*13 - 11 + 0.5 (8 - 2) = 18, (4 - 1) / 2 slopes over 15
    assert raw[2:5] == outs[2:5] and raw[6] == 18.0
    # warm-up 1: step 1 has one value (reused), step 2 a flat window and one anchor (BDF2 alone: the same value)
    outs, computed, _ = run_module(FoCaConfig(interval=3, warmup=1), 4)
    assert computed == [0, 3] and outs == [0.0, 0.0, 0.0, 9.0]
    # unequal gaps (a module not called on some steps): slopes per step, extrapolated over the gap h
    got = predict([(2, value(4.0)), (4, value(10.0))], [(0, value(0.0)), (4, value(10.0))], 7)
    assert got.item() == 10.0 + 3 * (3.0 + 2.5) / 2  # F_k + h (d_curr / h_k + d_full / h_full) / 2
    track = Track()
    track.computed(0, value(1.0))
    track.computed(1, torch.zeros(2))  # a new shape starts the module over
    assert len(track.window) == len(track.anchors) == 1


def test_schedule_on_a_model_forecasts_exactly_the_scheduled_steps():
    pipe = tiny_pipeline("latte")
    calls = []
    for block in pipe.transformer.transformer_blocks:  # the spatial MLP's own forward: computed, not forecast
        block.ff.register_forward_hook(lambda m, a, o: calls.append(1))
    pipe.set_cache(FoCaConfig(interval=3, warmup=3))
    out = pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=10)
    stats = out.stats["foca"]
    assert stats["forecast_step_indices"] == [3, 4, 6, 7, 9]
    per_step = stats["computed_modules"] // 5  # 5 full steps (0, 1, 2, 5, 8), every module computes on them
    assert per_step == 5 * 2 and stats["forecast_modules"] == 5 * per_step  # 5 modules per layer pair, 2 layers
    assert len(calls) == 5 * 2  # the spatial MLP of each of 2 layers ran on the 5 full steps only
    assert torch.isfinite(out.latents).all()


def test_names_parse():
    latte = published("latte")  # the published settings of Latte
    assert config_from_name("foca", latte) == FoCaConfig(interval=5, warmup=3)  # TaylorSeer's published defaults
    assert config_from_name("foca-3", latte) == FoCaConfig(interval=3)
    assert config_from_name("foca-4-w2-raw", latte) == FoCaConfig(interval=4, warmup=2, normalise=False)
    assert configs_from_spec({"method": "foca", "interval": 6}, latte) == [FoCaConfig(interval=6)]
    assert "foca-<interval>[-w<warmup>][-raw]" in choices() and "foca-3" in sweep_names()
    for bad in ("foca-x", "foca-3-q", "foca-0", "foca-3-w0"):
        with pytest.raises(ValueError):
            config_from_name(bad, latte)
    with pytest.raises(ValueError, match="schedule"):
        FoCaConfig(schedule="sometimes")
    from videosys.cli import build_parser, make_config

    args = build_parser().parse_args(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "p",
                                      "--cache", "foca-4-raw"])
    assert make_config(args).cache_configs() == [FoCaConfig(interval=4, normalise=False)]
