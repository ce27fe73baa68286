"""Our TaylorSeer / First-Block-Cache / MagCache against diffusers' hooks on CogVideoX, same random weights and
settings: a small hand denoising loop drives both transformers (diffusers' with its hooks, in a
cache_context as its CogVideoXPipeline does) and the outputs must agree step by step."""

import pytest
import torch

from test_cogvideox import TEXT_DIM, TEXT_LEN, diffusers_rotary, pair

STEPS = 10
TIMESTEPS = [int(t) for t in torch.linspace(999, 1, STEPS)]


def hand_loop(model, step_fn, seed: int = 1):
    """x <- x - 0.1 * model(x, t) over TIMESTEPS; the outputs of every step. `step_fn(i, t)` runs first."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, 4, 8, 12, generator=g)
    text = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=g)
    outs = []
    with torch.no_grad():
        for i, t in enumerate(TIMESTEPS):
            out = step_fn(i, t, x, text)
            outs.append(out)
            x = x - 0.1 * out
    return outs


def run_ours(ours, config):
    ours.enable_cache(config)
    ours.cache_begin([float(t) for t in TIMESTEPS])

    def step(i, t, x, text):
        ours.cache_step(i, float(t))
        return ours(x, text, torch.full((x.shape[0],), t))

    outs = hand_loop(ours, step)
    stats = ours.cache_stats()
    ours.disable_cache()
    return outs, stats


def run_diffusers(ref, config, rope):
    ref.enable_cache(config)

    def step(i, t, x, text):
        with ref.cache_context("cond_uncond"):
            return ref(x, text, torch.full((x.shape[0],), t), image_rotary_emb=rope, return_dict=False)[0]

    outs = hand_loop(ref, step)
    ref.disable_cache()
    return outs


def uncached(ours):
    return hand_loop(ours, lambda i, t, x, text: ours(x, text, torch.full((x.shape[0],), t)))


def assert_close_per_step(got, expected, plain, reused):
    """Equal to diffusers' within fp32 rounding on every step, and on the `reused` steps far closer to
    diffusers' than to the uncached output (a cache that computed everything would fail)."""
    for i, (a, b, p) in enumerate(zip(got, expected, plain)):
        err = (a - b).abs().max().item()
        assert err <= 1e-5, (i, err)
        if i in reused:
            assert err < 0.01 * (a - p).abs().max().item(), (i, err)


@pytest.fixture(params=[False, True], ids=["sincos-2b", "rope-5b"])
def models(request):
    ref, ours, _ = pair(request.param)
    return ref, ours, diffusers_rotary(ref, 2, 8, 12) if request.param else None


# ---- TaylorSeer -------------------------------------------------------------------------------------

@pytest.mark.parametrize("order,interval,schedule,forecast", [
    (0, 2, "paper", [3, 5, 7, 9]), (1, 2, "paper", [3, 5, 7, 9]), (2, 2, "paper", [3, 5, 7, 9]),
    (1, 3, "diffusers", [3, 5, 6, 8, 9]), (2, 4, "diffusers", [3, 5, 6, 7, 9])])
def test_taylorseer_matches_diffusers(models, order, interval, schedule, forecast):
    """For interval 2 the paper's schedule and diffusers' coincide (full steps 0, 1, 2, 4, 6, 8). For N > 2 they
    differ: diffusers computes on steps warmup+1 + kN (forecasting step `warmup` right after its warm-up), the
    authors' code (cal_type) on warmup-1 + kN; we follow the paper by default (test_cache_methods.py) and
    reproduce diffusers' with schedule="diffusers"."""
    from diffusers.hooks import TaylorSeerCacheConfig as Theirs

    from videosys.cache.taylorseer import TaylorSeerConfig

    ref, ours, rope = models
    theirs = Theirs(cache_interval=interval, disable_cache_before_step=3, max_order=order,
                    taylor_factors_dtype=torch.float32,
                    cache_identifiers=[r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"])
    expected = run_diffusers(ref, theirs, rope)
    got, stats = run_ours(ours, TaylorSeerConfig(interval=interval, max_order=order, warmup=3, schedule=schedule))
    assert stats["taylorseer"]["forecast_step_indices"] == forecast
    assert_close_per_step(got, expected, uncached(ours), reused=forecast)


# ---- First-Block-Cache --------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [0.3, 0.5])  # the tiny random model's first-block residual changes 20-50% a step
def test_first_block_cache_matches_diffusers(models, threshold):
    """A CogVideoX unit is one block, so diffusers' head (transformer_blocks.0) is our first unit."""
    from diffusers.hooks import FirstBlockCacheConfig as Theirs

    from videosys.cache.first_block import FirstBlockCacheConfig

    ref, ours, rope = models
    expected = run_diffusers(ref, Theirs(threshold=threshold), rope)
    got, stats = run_ours(ours, FirstBlockCacheConfig(threshold=threshold))
    reused = stats["fbcache"]["reused_step_indices"]
    assert reused  # the threshold does skip here
    assert_close_per_step(got, expected, uncached(ours), reused=reused)


# ---- MagCache -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold,skips,reused", [(0.06, 3, [2, 3, 5, 6, 8, 9]), (0.3, 3, [2, 3, 4, 6, 7, 8])])
def test_magcache_matches_diffusers(models, threshold, skips, reused):
    """Same ratios, threshold, K and retention. diffusers passes the text stream through a skipped stack
    unchanged where we add its residual too; CogVideoX's output reads only the video tokens (its final
    LayerNorm is per token), so the outputs agree."""
    from diffusers.hooks import MagCacheConfig as Theirs

    from videosys.cache.magcache import MagCacheConfig

    ref, ours, rope = models
    ratios = [1.0] + [0.98] * (STEPS - 1)
    expected = run_diffusers(ref, Theirs(threshold=threshold, max_skip_steps=skips, retention_ratio=0.2,
                                         num_inference_steps=STEPS, mag_ratios=ratios), rope)
    got, stats = run_ours(ours, MagCacheConfig(threshold=threshold, max_skip_steps=skips, retention_ratio=0.2,
                                               ratios=ratios))
    # hand-computed: from step 2 (20% of 10) on; the error 0.02 + 0.0396 + 0.0588 passes 0.06 at the third
    # step of a run, while 0.3 stops at K = 3
    assert stats["magcache"]["reused_step_indices"] == reused
    assert_close_per_step(got, expected, uncached(ours), reused=reused)
