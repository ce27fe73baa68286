"""TeaCache and PAB: exactness when disabled by settings, schedules, maths, stats, isolation."""

import numpy as np
import pytest
import torch

from videosys import LatteConfig, LattePipeline
from videosys.cache import PAB, PABConfig, TeaCacheConfig, configs_from_spec
from videosys.cache.hooks import ModuleHooks
from videosys.cache.teacache import TeaCache, relative_l1, rescale

from conftest import published

LATTE_COEFFICIENTS = published("latte")["teacache"]["coefficients"]
PROMPT = "a red circle moving to the right"
RUN = dict(seed=0, num_frames=4, num_inference_steps=12)


def pipeline(**config):
    return LattePipeline.from_config(LatteConfig(preset="tiny", progress_bar=False, **config))


@pytest.fixture(scope="module")
def uncached():
    return pipeline().generate(PROMPT, **RUN).video


# ---- maths ------------------------------------------------------------------------------------
def test_rescale_is_numpy_poly1d():
    for coefficients in (LATTE_COEFFICIENTS, published("open-sora")["teacache"]["coefficients"], (1.0, 2.0, 3.0)):
        for x in (0.0, 0.013, 0.07, 0.3):
            assert rescale(coefficients, x) == pytest.approx(float(np.poly1d(coefficients)(x)), rel=1e-12, abs=1e-12)
    assert rescale((1.0, 2.0, 3.0), 2.0) == 11.0  # 4 + 4 + 3


def test_polynomial_is_not_trusted_past_its_last_peak():
    from videosys.cache.teacache import last_peak

    peak = last_peak(LATTE_COEFFICIENTS)
    assert peak == pytest.approx(0.1741, abs=1e-3)  # -2464x^4 + ... has its last maximum there
    assert last_peak(published("open-sora")["teacache"]["coefficients"]) == float("inf")  # rises for ever
    cache = TeaCache(TeaCacheConfig(threshold=1.0, coefficients=LATTE_COEFFICIENTS))
    cache.begin([3.0, 2.0, 1.0, 0.0])
    cache.set_step(0, 3.0)
    cache.skip(torch.ones(4))
    cache.store(torch.zeros(4), torch.ones(4))
    cache.set_step(1, 2.0)
    # a 100% change: the raw polynomial gives -2.1e3 (skip!), the clamped one 1.2 >= 1.0 (compute)
    assert rescale(LATTE_COEFFICIENTS, 1.0) < 0
    assert not cache.skip(torch.full((4,), 2.0))


def test_relative_l1_by_hand():
    previous = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    current = torch.tensor([[1.5, -2.0], [2.0, -4.0]])
    # mean |diff| = (0.5 + 0 + 1 + 0) / 4 = 0.375 ; mean |previous| = 10 / 4 = 2.5
    assert float(relative_l1(current, previous)) == pytest.approx(0.15)


FP16_INDICATOR = (2, 16, 256, 1152)  # CFG batch x Latte's 16 frames x 256 patches x width 1152


def fp16_indicator(change: float, steps: int) -> list[torch.Tensor]:
    """An fp16 indicator of Latte-1's size that changes by `change` (relative L1) every step; its L1 sums
    (~1e7) are far past fp16's largest value, 65504."""
    base = torch.randn(FP16_INDICATOR, generator=torch.Generator().manual_seed(0))
    return [(base * (1 + change) ** k).half() for k in range(steps)]


def test_relative_l1_of_an_fp16_indicator_is_the_fp64_value():
    previous, current = fp16_indicator(0.06, 2)
    exact = float((current.double() - previous.double()).abs().sum() / previous.double().abs().sum())
    assert exact == pytest.approx(0.06, rel=1e-3)
    assert float(relative_l1(current, previous)) == pytest.approx(exact, rel=1e-5)


def test_teacache_fp16_indicator_computes_the_hand_derived_steps():
    """poly(x) = x, threshold 0.1, a 6% change per step: 0.06 (reuse), 0.12 (compute), 0.06, 0.12, ...
    So steps 0, 2, 4, 6 and the last compute. (At 5% two steps sum to the threshold itself, 0.05 + 0.05,
    and rounding would decide.) Summed in fp16, the distance was inf / inf = nan, `nan >= 0.1` is False,
    and every middle step was reused."""
    n = 8
    cache = TeaCache(TeaCacheConfig(threshold=0.1, coefficients=(1.0, 0.0)))
    cache.begin([float(1000 - 100 * i) for i in range(n)])
    for i, indicator in enumerate(fp16_indicator(0.06, n)):
        cache.set_step(i, 1000.0 - 100 * i)
        if not cache.skip(indicator):
            cache.store(indicator, indicator)
    assert cache.stats()["reused_step_indices"] == [1, 3, 5]


def test_a_non_finite_distance_computes():
    cache = TeaCache(TeaCacheConfig(threshold=1e9, coefficients=(0.0,)))  # would reuse every middle step
    cache.begin([4.0, 3.0, 2.0, 1.0, 0.0])
    decisions = []
    for i, indicator in enumerate([torch.zeros(4), torch.zeros(4), torch.ones(4), torch.ones(4), torch.ones(4)]):
        cache.set_step(i, 4.0 - i)
        decisions.append(cache.skip(indicator))  # step 1: 0 / 0 = nan; step 2: 4 / 0 = inf; step 3: 0
        cache.store(torch.zeros(4), torch.ones(4))
    assert decisions == [False, False, False, True, False]


# ---- TeaCache ----------------------------------------------------------------------------------
def test_teacache_threshold_zero_is_exact(uncached):
    pipe = pipeline(cache=TeaCacheConfig(threshold=0.0, coefficients=LATTE_COEFFICIENTS))
    out = pipe.generate(PROMPT, **RUN)
    assert out.stats["teacache"]["reused_steps"] == 0
    assert torch.equal(out.video, uncached)


def test_teacache_forced_schedule():
    """A constant polynomial adds 0.04 per step: with threshold 0.1 the stack computes every third
    step (sum 0.12 >= 0.1), and the first and last steps always."""
    pipe = pipeline(cache=TeaCacheConfig(threshold=0.1, coefficients=(0.04,)))
    calls = []
    run_blocks = pipe.transformer.run_blocks
    pipe.transformer.run_blocks = lambda *a, **k: calls.append(1) or run_blocks(*a, **k)
    out = pipe.generate(PROMPT, **RUN)
    n = RUN["num_inference_steps"]
    predicted = [i for i in range(1, n - 1) if i % 3 != 0]
    assert out.stats["teacache"]["reused_step_indices"] == predicted
    assert out.stats["teacache"]["computed_steps"] == n - len(predicted) == len(calls)


def test_teacache_reuse_adds_the_stored_residual():
    """On a skipped step the block stack's output is its input x + (last output - last input) of the stack.

    The skipped call gets other latents and another timestep than the computing one, so "x + residual" and
    "return the cached output" give different results; the reference is the same forward with the stack
    replaced by "+ the recorded residual"."""
    model = pipeline().transformer
    model.enable_cache(TeaCacheConfig(threshold=1e9, coefficients=(0.0,)))
    g = torch.Generator().manual_seed(0)
    x, x2, text = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 4, 3, 8, 8, generator=g), \
        torch.randn(2, 5, 32, generator=g)
    residuals = []
    run_blocks = model.run_blocks

    def recording_blocks(h, **kw):
        out = run_blocks(h, **kw)
        residuals.append(out - h)
        return out

    model.run_blocks = recording_blocks
    model.cache_begin([900.0, 500.0, 100.0])
    with torch.no_grad():
        model.cache_step(0, 900.0)
        first = model(x, torch.tensor(900), text)
        model.cache_step(1, 500.0)
        second = model(x2, torch.tensor(500), text)  # skipped
        assert model.active_cache("teacache").stats()["reused_step_indices"] == [1] and len(residuals) == 1
        model.disable_cache()
        model.run_blocks = lambda h, **kw: h + residuals[0]
        expected = model(x2, torch.tensor(500), text)
        del model.run_blocks
        direct = model(x2, torch.tensor(500), text)
    assert residuals[0].abs().max() > 0
    assert torch.allclose(second, expected, atol=1e-6)
    assert not torch.allclose(second, first, atol=1e-2) and not torch.allclose(second, direct, atol=1e-2)


def test_teacache_state_is_reset_every_generation():
    pipe = pipeline(cache="teacache-fast")
    a, b = pipe.generate(PROMPT, **RUN), pipe.generate(PROMPT, **RUN)
    assert torch.equal(a.video, b.video) and a.stats["teacache"] == b.stats["teacache"]
    assert a.stats["teacache"]["reused_steps"] > 0


def test_teacache_first_and_last_steps_always_compute():
    cache = TeaCache(TeaCacheConfig(threshold=1e9, coefficients=LATTE_COEFFICIENTS))
    cache.begin([float(t) for t in range(5)])
    decisions = []
    for i in range(5):
        cache.set_step(i, float(i))
        skip = cache.skip(torch.ones(3))
        decisions.append(skip)
        if not skip:
            cache.store(torch.zeros(3), torch.ones(3))
    assert decisions == [False, True, True, True, False]


def test_separate_branches_keep_separate_state():
    cache = TeaCache(TeaCacheConfig(threshold=0.5, coefficients=(1.0, 0.0)))  # poly(x) = x
    cache.begin([3.0, 2.0, 1.0, 0.0])
    cache.set_step(0, 3.0)
    for branch in ("cond", "uncond"):
        assert not cache.skip(torch.ones(4), branch=branch)
        cache.store(torch.zeros(4), torch.full((4,), 2.0), branch=branch)
    cache.set_step(1, 2.0)
    assert cache.skip(torch.ones(4), branch="cond")  # unchanged indicator: distance 0
    assert not cache.skip(torch.full((4,), 3.0), branch="uncond")  # distance 2 >= 0.5
    assert torch.equal(cache.apply_cached(torch.zeros(4), branch="cond"), torch.full((4,), 2.0))


# ---- PAB --------------------------------------------------------------------------------------
def test_pab_range_one_is_exact(uncached):
    config = PABConfig(spatial=((-1, 2000), 1), temporal=((-1, 2000), 1), cross=((-1, 2000), 1), mlp={})
    out = pipeline(cache=config).generate(PROMPT, **RUN)
    assert torch.equal(out.video, uncached)
    assert not any(k.endswith("_reused") and v for k, v in out.stats["pab"].items())


def test_pab_window_is_strict_and_range_counts_step_index():
    pab = PAB(PABConfig(spatial=((100, 800), 2), temporal=((100, 800), 3), cross=None))
    timesteps = [900.0, 800.0, 799.0, 500.0, 400.0, 101.0, 100.0, 50.0]
    pab.begin(timesteps)
    # spatial: odd indices inside (100, 800): 800 (i=1) is on the edge, 100 (i=6) too
    assert pab.broadcast_plan["spatial"] == [False, False, False, True, False, True, False, False]
    assert pab.broadcast_plan["temporal"] == [False, False, True, False, True, True, False, False]
    assert pab.broadcast_plan["cross"] == [False] * 8


def test_pab_broadcast_reuses_the_last_output_and_counts():
    pab = PAB(PABConfig(spatial=((0, 1000), 2), temporal=None, cross=None))
    pab.begin([900.0, 800.0, 700.0, 600.0])
    seen = []
    for i in range(4):
        pab.set_step(i, pab.timesteps[i])
        seen.append(float(pab.attention("spatial", 0, lambda: torch.tensor(float(i)))))
    assert seen == [0.0, 0.0, 2.0, 2.0]
    assert pab.stats() == {"spatial_computed": 2, "spatial_reused": 2}


def test_pab_mlp_schedule():
    pab = PAB(PABConfig(spatial=None, temporal=None, cross=None, mlp={700: ((0, 1), 2)}))
    timesteps = [900.0, 800.0, 700.0, 600.0, 500.0, 400.0]
    pab.begin(timesteps)
    values = {}
    for i, t in enumerate(timesteps):
        pab.set_step(i, t)
        values[i] = [float(pab.mlp("spatial", b, lambda: torch.tensor(float(i)))) for b in (0, 1, 2)]
    # stored at 700 (index 2), reused at the next two steps by blocks 0 and 1 only
    assert values[3] == [2.0, 2.0, 3.0] and values[4] == [2.0, 2.0, 4.0] and values[5] == [5.0, 5.0, 5.0]
    assert pab.stats() == {"mlp_computed": 14, "mlp_reused": 4}


def test_pab_latte_broadcasts_the_gated_outputs_of_the_computing_step():
    """The PAB authors' Latte (VideoSys) keeps gate_msa * attention and gate_mlp * MLP: a broadcast step
    adds the very tensor the computing step added, under the computing step's gate, not the cached
    attention times its own gate. Checked on a spatial block (self-attention, cross-attention, MLP):
    what a sub-layer adds is read off the cross-attention's input and output."""
    block = pipeline().transformer.transformer_blocks[0]
    pab = PAB(PABConfig(spatial=((0, 1000), 2), temporal=None, cross=None, mlp={900: ((0,), 1)}))
    pab.begin([900.0, 500.0])  # step 1 broadcasts the attention (odd index) and reuses block 0's MLP
    seen = {}
    hooks = [block.attn1.register_forward_hook(lambda m, args, out: seen.__setitem__("attn", out)),
             block.attn2.register_forward_hook(lambda m, args, out: seen.update(cross_in=args[0], cross=out))]
    g = torch.Generator().manual_seed(0)
    b, f, l, c = 2, 3, 4, block.scale_shift_table.shape[1]
    context = torch.randn(b, 5, c, generator=g)
    added = []
    with torch.no_grad():
        for step in range(2):
            pab.set_step(step, pab.timesteps[step])
            x, t_mod = torch.randn(b, f, l, c, generator=g), torch.randn(b, 6 * c, generator=g)
            out = block(x, t_mod, context, hooks=ModuleHooks([pab]))  # PAB alone at the module hook points
            after_attn = seen["cross_in"].view(b, f, l, c)
            after_cross = after_attn + seen["cross"].view(b, f, l, c)
            gates = block.modulation(t_mod)
            added.append(dict(attn=after_attn - x, mlp=out - after_cross, gate_msa=gates[2], gate_mlp=gates[5],
                              computed_attn=None if "attn" not in seen else seen.pop("attn").view(b, f, l, c)))
    for hook in hooks:
        hook.remove()
    computing, broadcast = added
    assert pab.stats() == {"cross_computed": 2, "mlp_computed": 1, "mlp_reused": 1, "spatial_computed": 1,
                           "spatial_reused": 1}
    assert torch.allclose(computing["attn"], computing["gate_msa"] * computing["computed_attn"], atol=1e-6)
    assert broadcast["computed_attn"] is None  # not recomputed
    assert torch.allclose(broadcast["attn"], computing["attn"], atol=1e-6)
    assert torch.allclose(broadcast["mlp"], computing["mlp"], atol=1e-5)
    # the gates differ between the steps, so "cached output x this step's gate" would not match
    regated = broadcast["gate_msa"] * computing["computed_attn"]
    assert (regated - computing["attn"]).abs().max() > 1e-2
    assert (broadcast["gate_mlp"] - computing["gate_mlp"]).abs().max() > 1e-2


def test_pab_latte_stats_match_the_plan():
    pipe = pipeline(cache="pab")
    out = pipe.generate(PROMPT, num_frames=4, num_inference_steps=50, seed=0)
    plan = pipe.transformer.active_cache("pab").broadcast_plan
    layers = pipe.transformer.config.num_layers
    for kind in ("spatial", "temporal", "cross"):
        reused = sum(plan[kind]) * layers
        assert out.stats["pab"][f"{kind}_reused"] == reused > 0
        assert out.stats["pab"][f"{kind}_computed"] == 50 * layers - reused
    # Latte: MLP stored at 720, 640, 560, 480, 400 and reused 2 steps after, blocks 0-4 (tiny has 2)
    assert out.stats["pab"]["mlp_reused"] == 5 * 2 * 2 * layers


# ---- configuration and isolation ---------------------------------------------------------------
def test_config_switches_and_presets():
    tea = LatteConfig(preset="tiny", enable_teacache=True, teacache_thresh=0.2).cache_configs()
    assert tea == [TeaCacheConfig(threshold=0.2, coefficients=LATTE_COEFFICIENTS)]
    assert configs_from_spec("teacache-fast", published("latte"))[0].threshold == 0.2
    assert configs_from_spec("teacache-slow", published("latte"))[0].threshold == 0.1
    pab = LatteConfig(preset="tiny", enable_pab=True).cache_configs()[0]
    assert pab.spatial == ((100.0, 800.0), 2) and pab.temporal == ((100.0, 800.0), 3)
    assert pab.cross == ((100.0, 800.0), 6) and sorted(pab.mlp) == [400.0, 480.0, 560.0, 640.0, 720.0]
    with pytest.raises(ValueError, match="unknown cache"):
        LatteConfig(cache="magic")
    with pytest.raises(ValueError, match="once"):
        LatteConfig(cache="pab", enable_pab=True)
    with pytest.raises(ValueError, match="threshold"):
        TeaCacheConfig(threshold=-1)
    with pytest.raises(ValueError, match="needs the model's polynomial coefficients"):  # no default: no other
        TeaCacheConfig(threshold=0.1)  # model's polynomial stands in


def test_yaml_keeps_cache(tmp_path):
    config = LatteConfig(preset="tiny", cache=[TeaCacheConfig(threshold=0.15, coefficients=LATTE_COEFFICIENTS), "taylorseer"])
    config.to_yaml(tmp_path / "c.yaml")
    again = LatteConfig.from_yaml(str(tmp_path / "c.yaml"))
    assert again.cache_configs() == config.cache_configs()


def test_two_pipelines_do_not_interfere(uncached):
    cached, plain = pipeline(cache="teacache-fast"), pipeline()
    solo = cached.generate(PROMPT, **RUN).video
    a = cached.generate(PROMPT, **RUN).video
    b = plain.generate(PROMPT, **RUN).video
    assert plain.transformer.active_cache("teacache") is None and cached.transformer.active_cache("teacache") is not None
    assert torch.equal(a, solo) and torch.equal(b, uncached)
    assert not torch.equal(a, b)
