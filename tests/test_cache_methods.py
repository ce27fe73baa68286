"""TaylorSeer, First-Block-Cache, MagCache, EasyCache (videosys/cache/): hand-computed maths and schedules,
settings that never reuse give the uncached output exactly, every family runs them and reuses, sp=2 decides
like one process (FoCa too, in the tables; its maths: tests/test_foca.py). (Against diffusers' own hooks:
tests/test_cache_peers.py.)"""

import pytest
import torch

from videosys.cache.easycache import EasyCacheConfig
from videosys.cache.first_block import FirstBlockCacheConfig
from videosys.cache.foca import FoCaConfig
from videosys.cache.hooks import BlockStack
from videosys.cache.magcache import MagCacheConfig
from videosys.cache.registry import NeedsCalibration, config_from_name, configs_from_spec
from videosys.cache.taylorseer import TaylorSeerConfig, forecast, full_step, update_factors

from conftest import PROMPT, published, tiny_pipeline
from distributed import run_distributed
from test_cache_registry import FAMILIES, build

STEPS = 10
ONES = (1.0,) * STEPS


# ---- TaylorSeer maths and schedule ---------------------------------------------------------------

def factors_of(values, max_order, at=None):
    """The factors after full steps at `at` (default 0, 1, 2, ...) with outputs `values`."""
    at = at or list(range(len(values)))
    factors, last = None, None
    for i, v in zip(at, values):
        factors = update_factors(factors, torch.tensor([float(v)]), i - last if last is not None else 1, max_order)
        last = i
    return factors, last


def test_taylorseer_forecast_is_exact_for_a_line_and_the_papers_formula_for_a_parabola():
    # first order on f(i) = 3 + 2i, full steps 0, 3, 6: divided differences give the slope exactly
    factors, last = factors_of([3, 9, 15], 1, at=[0, 3, 6])
    assert [forecast(factors, d).item() for d in (1, 2, 5)] == [17.0, 19.0, 25.0]
    # second order on f(i) = i^2, full steps 0, 1, 2: D0 = 4, D1 = 4 - 1 = 3 (backward difference), D2 = 3 - 1 = 2,
    # so F(3) = 4 + 3 + 2 / 2 = 8 (the paper's Taylor form of backward differences; the true value is 9)
    factors, _ = factors_of([0, 1, 4], 2)
    assert [f.item() for f in factors] == [4.0, 3.0, 2.0]
    assert forecast(factors, 1).item() == 8.0
    # order 0 reuses the last output
    factors, _ = factors_of([0, 1, 4], 0)
    assert forecast(factors, 3).item() == 4.0
    # a new shape restarts the expansion
    assert len(update_factors(factors_of([0, 1], 1)[0], torch.zeros(2), 1, 1)) == 1


def test_taylorseer_schedule_is_the_papers():
    # warm-up 3 steps, then every 3rd step from the last warm-up step on (the authors' cal_type counter)
    assert [i for i in range(12) if full_step(i, 3, 3)] == [0, 1, 2, 5, 8, 11]
    assert [i for i in range(8) if full_step(i, 1, 3)] == list(range(8))
    assert [i for i in range(12) if full_step(i, 3, 3, "diffusers")] == [0, 1, 2, 4, 7, 10]  # diffusers' variant
    pipe = tiny_pipeline("latte")
    pipe.set_cache(TaylorSeerConfig(interval=3, warmup=3))
    out = pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=STEPS)
    stats = out.stats["taylorseer"]
    assert stats["forecast_step_indices"] == [3, 4, 6, 7, 9]
    per_step = stats["computed_modules"] // (STEPS - 5)  # every module of a full step computes
    assert stats["forecast_modules"] == 5 * per_step and per_step == 5 * 2  # 5 modules per Latte layer pair, 2 layers


def test_names_parse_to_the_published_settings():
    latte = published("latte")  # the published settings of Latte
    assert config_from_name("taylorseer", latte) == TaylorSeerConfig(interval=5, max_order=1, warmup=3)
    assert config_from_name("taylorseer-3-2", latte) == TaylorSeerConfig(interval=3, max_order=2)
    assert config_from_name("fbcache", latte) == FirstBlockCacheConfig(threshold=0.05)
    assert config_from_name("easycache-0.1", latte) == EasyCacheConfig(threshold=0.1, warmup=5)
    assert configs_from_spec({"method": "magcache", "ratios": [1.0, 0.9]}, latte) == [
        MagCacheConfig(ratios=(1.0, 0.9))]
    pipe = tiny_pipeline("latte")
    with pytest.raises(ValueError, match="magnitude ratios"):  # none published for Latte: asks for a calibration
        pipe.set_cache("magcache")
    with pytest.raises(NeedsCalibration, match="--method magcache"):  # a config object without ratios: the same
        pipe.transformer.enable_cache(MagCacheConfig())
    assert "magcache" not in pipe.transformer.caches
    for bad in (dict(interval=0), dict(kinds=("conv",))):
        with pytest.raises(ValueError):
            TaylorSeerConfig(**bad)
    with pytest.raises(ValueError):
        MagCacheConfig(ratios=(1.0, -0.5))


# ---- EasyCache decisions by hand -------------------------------------------------------------------

def test_easycache_accumulates_the_predicted_change():
    """A stack that doubles its input, inputs (1 + 0.01 i): k = 2 after step 1; step i adds
    2 * 0.01 / mean|out_1| = 0.02 / 2.02 ~ 0.0099, so 2 and 3 are skipped, 4 computes (0.0297 >= 0.025), 5 is last."""
    from videosys.cache.easycache import EasyCache

    cache = EasyCache(EasyCacheConfig(threshold=0.025, warmup=1))
    cache.begin([0.0] * 6)
    outs = []
    for i in range(6):
        cache.set_step(i, 0.0)
        x = torch.full((2, 3), 1 + 0.01 * i)
        stack = BlockStack((x,), lambda *s, start=0, stop=None: tuple(2 * t for t in s), 1)
        outs.append(cache.stack(stack)[0])
    assert cache.stats()["reused_step_indices"] == [2, 3]
    assert torch.allclose(outs[2], torch.full((2, 3), 1.02 + 1.01))  # x_2 + the residual of step 1 (x_1)
    assert torch.allclose(outs[4], torch.full((2, 3), 2.08))


# ---- every family --------------------------------------------------------------------------------

NEVER = {  # settings under which nothing is reused
    "taylorseer": TaylorSeerConfig(interval=1),
    "foca": FoCaConfig(interval=1),
    "fbcache": FirstBlockCacheConfig(threshold=0.0),
    "magcache": MagCacheConfig(ratios=ONES, max_skip_steps=0),
    "easycache": EasyCacheConfig(threshold=0.0),
}
REUSING = {  # settings that reuse on the tiny random models (their features change by 20-100% a step)
    "taylorseer": (TaylorSeerConfig(interval=3, max_order=1), "forecast_modules"),
    "foca": (FoCaConfig(interval=3), "forecast_modules"),
    "fbcache": (FirstBlockCacheConfig(threshold=2.0), "reused_steps"),
    "magcache": (MagCacheConfig(ratios=ONES, threshold=1.0, max_skip_steps=2), "reused_steps"),
    "easycache": (EasyCacheConfig(threshold=5.0, warmup=2), "reused_steps"),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_runs_each_method(name):
    pipe, run = build(name)
    run = dict(seed=0, num_inference_steps=6, **run)
    pipe.set_cache(None)
    plain = pipe.generate(PROMPT, **run)
    for method, config in NEVER.items():
        pipe.set_cache(config)
        out = pipe.generate(PROMPT, **run)
        assert torch.equal(out.latents, plain.latents), (method, "reuses nothing, so changes nothing")
    for method, (config, key) in REUSING.items():
        pipe.set_cache(config)
        out = pipe.generate(PROMPT, **run)
        assert out.stats[method][key] > 0, (method, out.stats[method])
        assert torch.isfinite(out.latents).all() and not torch.equal(out.latents, plain.latents), method
        assert method in pipe.transformer.cache_postfix()
    pipe.set_cache(None)


# ---- sp=2 decides like one process ---------------------------------------------------------------

SP_CASES = {"latte": dict(num_frames=4), "cogvideox-2b": dict(num_frames=9, height=32, width=32)}


def _generate_all(pipe, run):
    out = {}
    for method, (config, _) in REUSING.items():
        pipe.set_cache(config)
        result = pipe.generate(PROMPT, seed=0, num_inference_steps=STEPS, **run)
        out[method] = (result.latents, result.stats[method])
    pipe.set_cache(None)
    return out


def _sp2(rank, world, names):
    import torch

    from videosys.core.parallel import init_parallel

    torch.manual_seed(0)
    state = init_parallel(False, "cpu")
    out = {}
    for name in names:
        pipe, run = build(name)
        pipe.set_parallel(state)
        out[name] = _generate_all(pipe, {**run, **SP_CASES[name]})
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sp2_decides_like_one_process():
    """The token counts divide by 2 here (no padded shard, whose padding would enter the L1 sums)."""
    ranks = run_distributed(_sp2, 2, list(SP_CASES))
    for name, run in SP_CASES.items():
        pipe, base = build(name)
        single = _generate_all(pipe, {**base, **run})
        for method, (latents, stats) in single.items():
            for rank in ranks:
                got, got_stats = rank[name][method]
                assert got_stats == stats, (name, method)
                assert (got - latents).abs().max() <= 1e-4 * max(1.0, latents.abs().max().item()), (name, method)


@pytest.mark.parametrize("method", ["fbcache", "magcache", "easycache"])
def test_state_is_per_cfg_branch(method):
    """A branch seen for the first time (the cond half run alone, as when a CFG cache skipped uncond) computes,
    whatever the other branch's state says; the other branch keeps reusing."""
    from videosys.cache.registry import METHODS

    config = REUSING[method][0]
    cache = METHODS[method].cache_cls(config)
    cache.begin([0.0] * STEPS)
    runs = []

    def run(*s, start=0, stop=None):
        runs.append(start)
        return tuple(t * 1.001 + 0.001 for t in s)

    seen = {}
    for i in range(STEPS - 1):
        cache.set_step(i, 0.0)
        x = torch.full((1, 4, 3), 1.0 + 1e-4 * i)
        branches = ("batch", "cond") if i == STEPS - 2 else ("batch",)
        for branch in branches:
            before = len(runs)
            cache.stack(BlockStack((x,), run, 2, branch=branch))
            seen[(i, branch)] = runs[before:] == ([0] if method == "fbcache" else [])  # reused: the head at most
    assert seen[(STEPS - 2, "batch")] and not seen[(STEPS - 2, "cond")]  # batch reuses, the new cond branch computes
