"""Methods that extrapolate or compare across steps key their history by the steps they actually ran, so beside a
method that skips whole steps the spacing they use is the steps' (issue: forecast-i2+fastercache extrapolated
attention several steps old as if one step apart). A stub step-skipper forces a known schedule."""

import pytest
import torch

from videosys.cache.fastercache import FasterCacheConfig
from videosys.cache.foca import FoCaConfig
from videosys.cache.magcache import MagCacheConfig
from videosys.cache.pab import PABConfig
from videosys.cache.taylorseer import TaylorSeerConfig

from conftest import PROMPT, tiny_pipeline

STEPS = 14
SKIPPED = (4, 5, 8, 11, 12)  # the stub's steps: the model does not run (its last prediction is supplied)


@pytest.fixture
def skipper(skip_steps):
    return skip_steps(steps=SKIPPED)


def spy(pipe, name: str) -> list:
    """(step, computed?, output) of method `name` at Latte's block-0 spatial attention, cond-free batch rows."""
    cache, calls = pipe.transformer.caches[name], []
    module = cache.module

    def wrapped(site, compute):
        ran = []
        out = module(site, lambda: ran.append(1) or compute())
        if (site.kind, site.block, site.index) == ("spatial", "spatial", 0):
            calls.append((cache.step, bool(ran), out.clone()))
        return out
    cache.module = wrapped
    return calls


def run(pipe, configs):
    pipe.set_cache(configs)
    return pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=STEPS)


def test_the_stub_runs_the_model_on_the_other_steps_only(skipper):
    pipe = tiny_pipeline("latte")
    steps = []
    pipe.transformer.register_forward_pre_hook(lambda m, a: steps.append(pipe.transformer.caches["test-skip-steps"].step))
    run(pipe, [skipper])
    assert steps == [s for s in range(STEPS) if s not in SKIPPED]


def test_taylorseer_extrapolates_over_the_steps_between_its_computes(skipper):
    """Full steps 0-2, then 2 + 3k (5, 8, 11 fall on skipped steps): each forecast is D0 + D1 (s - s1) with
    D1 = (D0 - D0') / (s1 - s2), s1, s2 the steps of its last two computes."""
    pipe = tiny_pipeline("latte")
    pipe.set_cache([skipper, TaylorSeerConfig(interval=3, max_order=1, warmup=3)])
    calls = spy(pipe, "taylorseer")
    pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=STEPS)
    computed, checked = [], 0
    for step, ran, out in calls:
        if ran:
            computed.append((step, out))
            continue
        (s2, d2), (s1, d1) = computed[-2:]
        expected = d1 + (d1 - d2) / (s1 - s2) * (step - s1)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        checked += (s1 - s2 > 1 or step - s1 > 1)  # a spacing the skipper stretched
    assert checked >= 2
    # its full steps 5, 8, 11 were skipped: the next call of each computes (6, 9, 13) rather than extrapolating
    assert [s for s, ran, _ in calls if ran] == [0, 1, 2, 6, 9, 13]


def test_pab_broadcasts_only_the_output_of_its_last_compute_step(skipper):
    """Spatial broadcast on odd steps: a broadcast step whose compute step was skipped (8 before 9, 12 before 13)
    computes; 1, 3, 7 reuse the output of the step before."""
    pipe = tiny_pipeline("latte")
    pipe.set_cache([skipper, PABConfig(spatial=((-1, 1000), 2))])
    calls = spy(pipe, "pab")
    pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=STEPS)
    assert [s for s, ran, _ in calls if not ran] == [1, 3, 7]
    outputs = {s: out for s, _, out in calls}
    for step in (1, 3, 7):
        assert torch.equal(outputs[step], outputs[step - 1])


def test_foca_window_holds_the_steps_it_ran(skipper):
    pipe = tiny_pipeline("latte")
    pipe.set_cache([skipper, FoCaConfig(interval=3, warmup=3)])
    calls = spy(pipe, "foca")
    pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=STEPS)
    ran_steps = [s for s, _, _ in calls]
    assert not set(ran_steps) & set(SKIPPED)
    track = next(t for site, t in pipe.transformer.caches["foca"].state.items() if site.index == 0)
    assert [s for s, _ in track.window] == ran_steps[-2:]  # advances on the steps it ran, not every index
    assert all(s in ran_steps for s, _ in track.anchors)


def test_fastercache_attention_counts_the_calls_it_saw_and_extrapolates_in_steps(skipper):
    """Spatial reuse every 2nd call: alone on odd steps; beside the stub on every 2nd step that runs (by step index
    the runs 6, 7, 9, 10, 13 would reuse on 7, 9, 13 only). An extrapolation A1 + w r (A1 - A2) reaches (s - s1)
    steps from outputs (s1 - s2) apart: r = (s - s1) / (s1 - s2) relative to the same in calls (1 alone)."""
    pipe = tiny_pipeline("latte")
    config = FasterCacheConfig(spatial=((-1, 1000), 2), uncond=None, weight=0.5)
    pipe.set_cache([skipper, config])
    calls = spy(pipe, "fastercache")
    pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=STEPS)
    ran = [s for s, _, _ in calls]
    assert ran == [s for s in range(STEPS) if s not in SKIPPED]
    # reused on every odd call once two computed outputs exist (call 1 has one)
    assert [s for s, computed, _ in calls if not computed] == [ran[c] for c in range(3, len(ran), 2)]
    computed, checked = [], 0
    for call, (step, was_computed, out) in enumerate(calls):
        if was_computed:
            computed.append((step, call, out))
            continue
        (s2, c2, a2), (s1, c1, a1) = computed[-2:]
        ratio = ((step - s1) / (s1 - s2)) / ((call - c1) / (c1 - c2))
        torch.testing.assert_close(out, a1 + 0.5 * ratio * (a1 - a2), rtol=1e-5, atol=1e-6)
        checked += ratio != 1
    assert checked >= 2


def test_magcache_accumulates_the_ratio_of_every_step_since_its_last_call(skipper):
    """Ratio 0.9 per step: across a skipped stretch the kept residual drifts by 0.9 per step, not once."""
    pipe = tiny_pipeline("latte")
    ratios = (1.0,) + (0.9,) * (STEPS - 1)
    pipe.set_cache([skipper, MagCacheConfig(ratios=ratios, threshold=100.0, max_skip_steps=100, retention_ratio=0.2)])
    seen = []
    cache = pipe.transformer.caches["magcache"]
    skip = cache.skip

    def wrapped(state, streams):
        out = skip(state, streams)
        seen.append((cache.step, state.ratio))
        return out
    cache.skip = wrapped
    pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=STEPS)
    retention = int(0.2 * STEPS + 0.5)
    first = next(s for s, _ in seen if s >= retention)
    # never reset (threshold 100): the accumulated ratio is 0.9 ** (steps since the first decision + 1)
    for step, ratio in seen:
        if step >= first:
            assert ratio == pytest.approx(0.9 ** (step - first + 1))
    assert any(b - a > 1 for (a, _), (b, _) in zip(seen, seen[1:]) if a >= first)
