"""The registered caches on LaVie's UNet (tiny): which apply, that each acts and reports; DeepCache's split of the U;
TeaCache's calibrated-on-tiny polynomial and its refusal on the release; CFG parallel equal to one process."""

import pytest
import torch

from videosys.cache.deepcache import DeepCacheConfig
from videosys.cache.registry import NeedsCalibration
from videosys.models.lavie.pipeline import LaVieConfig, LaViePipeline

from conftest import PROMPT, applicable_methods

RUN = dict(seed=2, num_inference_steps=6, num_frames=2)
PAB = {"method": "pab", "spatial": ((100, 900), 2), "temporal": ((100, 900), 3), "cross": ((100, 900), 4)}


@pytest.fixture(scope="module")
def tiny():
    return LaViePipeline.from_config(LaVieConfig(preset="tiny", progress_bar=False))


def test_every_method_that_applies_runs_and_reports(tiny):
    methods = applicable_methods(tiny)
    # no PAB windows, FasterCache schedules or MagCache ratios are published for LaVie; it has no Skip-DiT branches
    assert {name for name, config in methods.items() if config is None} == {"pab", "fastercache", "magcache",
                                                                             "skipcache"}
    assert methods["deepcache"] == DeepCacheConfig(interval=3, branch=0)
    run = {**RUN, "num_inference_steps": 10}
    base = tiny.generate(PROMPT, **run)
    changed = {}
    for spec in [n for n, c in methods.items() if c is not None] + ["fastercache-diffusers", PAB]:
        tiny.set_cache(spec)
        name = next(iter(tiny.transformer.caches))
        out = tiny.generate(PROMPT, **run)
        assert torch.isfinite(out.latents).all() and out.stats[name], name
        changed[name] = not torch.equal(out.latents, base.latents)
    tiny.set_cache(None)
    assert torch.equal(tiny.generate(PROMPT, **run).latents, base.latents)
    assert changed.pop("easycache") is False  # its default threshold never reuses this random model's steps
    assert all(changed.values()), changed  # every other one acted


def assert_deepcache_splits_exactly(unet, call, t: float, atol: float) -> None:
    """For every branch depth: DeepCache at interval 2 computes step 0 and reuses step 1; on step 1's input equal to
    step 0's, the reused deep features give the full output (the right skips taken back). Leaves the cache off."""
    with torch.no_grad():
        plain = call()
        for branch in range(unet.down_units):
            unet.disable_cache()
            unet.enable_cache(DeepCacheConfig(interval=2, branch=branch))
            unet.cache_begin([t, t - 20])
            outs = []
            for i in range(2):
                unet.cache_step(i, t)
                outs.append(call())
            state = unet.active_cache("deepcache")
            assert (state.computed, state.reused_steps) == (1, [1])
            assert torch.allclose(outs[0], plain, atol=atol) and torch.allclose(outs[1], plain, atol=atol), branch
    unet.disable_cache()


def test_deepcache_runs_the_shallow_ends_of_the_u(tiny):
    """A cached step on the very input of a full step gives the full step's output (the right skips taken back);
    interval 1 is the uncached model; the counts follow the uniform schedule."""
    unet = tiny.transformer
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 3, 4, 4, generator=gen), torch.randn(2, 77, 32, generator=gen)
    assert_deepcache_splits_exactly(unet, lambda: unet(x, torch.tensor(500), text), 500.0, atol=1e-6)
    unet.disable_cache()
    base = tiny.generate(PROMPT, **RUN)
    tiny.set_cache(DeepCacheConfig(interval=1))
    assert torch.allclose(tiny.generate(PROMPT, **RUN).latents, base.latents, atol=1e-5)
    tiny.set_cache("deepcache-4")
    out = tiny.generate(PROMPT, **RUN)
    assert out.stats["deepcache"] == {"computed_steps": 2, "reused_steps": 4, "reused_step_indices": [1, 2, 3, 5]}
    with pytest.raises(ValueError, match="has 3 down units"):
        tiny.set_cache(DeepCacheConfig(branch=3))
    tiny.set_cache(None)


def test_deepcache_refuses_a_dit(tiny_latte):
    from videosys.models.latte.pipeline import LatteConfig

    with pytest.raises(ValueError, match="not a UNet"):
        LatteConfig(preset="tiny", cache="deepcache")
    with pytest.raises(ValueError, match="needs a UNet's block stack"):
        tiny_latte.transformer.enable_cache(DeepCacheConfig())


def test_teacache_has_the_tiny_models_numbers_only(tiny):
    """TeaCache reads the first ResNet's timestep-modulated input; its polynomial was fitted on the tiny preset, and
    the release borrows none (refused, naming the calibration command)."""
    unet = tiny.transformer
    tiny.set_cache("teacache-fast")
    out = tiny.generate(PROMPT, **RUN)
    assert out.stats["teacache"]["reused_steps"] > 0
    tiny.set_cache(None)
    with pytest.raises(NeedsCalibration, match="calibrate_teacache.py --model lavie --model-path YaohuiW/LaVie"):
        LaVieConfig(cache="teacache-slow")
    recorded = []
    stack = unet.cache_stack

    def spy(run, *streams, indicator, **kw):
        recorded.append((streams[0], indicator()))
        return stack(run, *streams, indicator=indicator, **kw)

    unet.cache_stack = spy
    try:
        gen = torch.Generator().manual_seed(0)
        x, text = torch.randn(1, 4, 2, 4, 4, generator=gen), torch.randn(1, 77, 32, generator=gen)
        with torch.no_grad():
            unet(x, torch.tensor(300), text)
            temb = unet.time_embedding(unet.time_proj(torch.tensor([300])))
            first = unet.down_blocks[0].resnets[0]
            h, indicator = recorded[0]
            by_hand = torch.stack([first.conv1(torch.nn.functional.silu(first.norm1(h))[:, :, f])
                                   for f in range(2)], 2) + first.time_emb_proj(torch.nn.functional.silu(temb))[
                :, :, None, None, None]
    finally:
        del unet.cache_stack
    assert torch.allclose(indicator, by_hand, atol=1e-5)


@pytest.mark.slow
def test_cfg_parallel_equals_one_process(one_thread_per_rank):
    from distributed import assert_same_as_single

    from videosys import VideoSysEngine

    single = LaViePipeline.from_config(LaVieConfig(preset="tiny", progress_bar=False))
    config = LaVieConfig(preset="tiny", progress_bar=False, num_gpus=2, cfg_parallel=True)
    with VideoSysEngine(config) as engine:
        for cache in ("none", "deepcache", "teacache-fast", "fastercache-diffusers"):
            single.set_cache(cache)
            engine.set_cache(cache)
            ref, out = single.generate(PROMPT, **RUN), engine.generate(PROMPT, **RUN)
            assert_same_as_single(out, ref, str(cache))
            assert out.stats.get("deepcache") == ref.stats.get("deepcache"), cache  # rank 0's: the uncond branch
