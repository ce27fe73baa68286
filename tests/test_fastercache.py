"""FasterCache: the per-family defaults against the authors' rules (transcribed from their scripts) at their step
counts and scaled to shorter runs, and the calls each family's pipeline then runs; windows, weight schedule and
frequency split against hand-computed values; the forced schedule's transformer calls; diffusers' FasterCache on
diffusers' CogVideoX against ours on the same weights (equal where both follow the paper, the differences shown
where diffusers does not); CFG / sequence parallel against one process; stats and the progress bar."""

import math
import types

import pytest
import torch

from videosys import VideoSysEngine
from videosys.cache import configs_from_spec, fastercache
from videosys.cache.fastercache import (Calls, FasterCache, FasterCacheConfig, Ramp, from_spectrum, low_pass_mask,
                                        ramp_weight, split_frequencies)
from videosys.cache.hooks import Site
from videosys.core.parallel import ParallelState
from videosys.core.pipeline import VideoSysPipeline

from conftest import PROMPT, published, tiny_config, tiny_pipeline
from test_cogvideox import TEXT_DIM, TEXT_LEN, pair

ALWAYS = (-1, 2000)  # a window holding every timestep


# ---- windows, weights, frequencies ------------------------------------------------------------------

# The authors' rules, transcribed from Vchitect/FasterCache scripts/<model>/fastercache_sample_<model>.py as they
# test their 1-based `counter` c (one call per step), independently of fastercache.py's Calls:
# family keys -> (their calls, attention reused, uncond skipped, low x alpha, high x alpha, weight at c, alphas)
AUTHORS_RULES = {
    ("latte",): (50, lambda c: c >= 16 and c % 2 == 0, lambda c: c >= 18 and c % 5 != 0,
                 lambda c: c < 45, lambda c: not c < 45 and c > 35, lambda c: 0.5, (1.1, 1.1)),
    ("open-sora",): (30, lambda c: c > 7 and c % 2 == 0, lambda c: c % 5 != 0 and c > 11,
                     lambda c: c <= 25, lambda c: c >= 20, lambda c: (c - 7) / 20.0 * 0.9, (1.15, 1.15)),
    ("open-sora-plan-v110", "open-sora-plan"): (159, lambda c: c >= 45 and c % 3 != 0, lambda c: c >= 40 and c % 6 != 0,
                                                lambda c: c <= 130, lambda c: not c <= 130 and c >= 100, lambda c: 0.3,
                                                (1.1, 1.2)),
    ("cogvideox-2b", "cogvideox"): (50, lambda c: c >= 18 and c % 3 != 0, lambda c: c >= 18 and c % 5 != 0,
                                    lambda c: c <= 40, lambda c: c >= 30, lambda c: 0.3, (1.1, 1.1)),
}


def plan(fc: FasterCache, steps: int) -> dict:
    """What a FasterCache state decides at each 1-based call of a `steps`-step generation."""
    fc.begin([999 - 999 * i / steps for i in range(steps)])
    out = {"spatial": [], "temporal": [], "uncond": [], "low": [], "high": [], "weight": {}}
    for i in range(steps):
        fc.set_step(i, fc.timesteps[i])
        low, high = fc.frequency_weights()
        for key, acts in (("spatial", fc.reuses("spatial")), ("temporal", fc.reuses("temporal")),
                          ("uncond", fc.uncond_plan[i]), ("low", low != 1.0), ("high", high != 1.0)):
            if acts:
                out[key].append(i + 1)
        if fc.reuses("spatial"):
            out["weight"][i + 1] = fc.weight()
    return out


@pytest.mark.parametrize("models", list(AUTHORS_RULES), ids=lambda m: m[0])
def test_defaults_are_the_authors_schedules_at_their_step_counts(models):
    calls, attention, uncond, low, high, weight, alphas = AUTHORS_RULES[models]
    config = configs_from_spec("fastercache", published(*models))[0]
    assert config.compound and (config.alpha_low, config.alpha_high) == alphas and config.calls == calls
    got = plan(FasterCache(config), calls)
    every = range(1, calls + 1)
    assert got["spatial"] == [c for c in every if attention(c)]
    assert got["temporal"] == ([] if models[0].startswith("cogvideox") else got["spatial"])  # 3D attention only
    assert got["uncond"] == [c for c in every if uncond(c)]
    assert got["low"] == [c for c in every if low(c)] and got["high"] == [c for c in every if high(c)]
    assert got["weight"] == pytest.approx({c: weight(c) for c in every if attention(c)})


def test_other_step_counts_scale_the_authors_bounds_and_keep_their_periods():
    # our call c of n ends at progress c / n; their calls first..last of N span ((first - 1) / N, last / N]
    latte = FasterCache(configs_from_spec("fastercache", published("latte"))[0])
    # 10 steps for their 50: attention from their call 16 (c > 15 / 5), uncond from 18 (c > 17 / 5), low on their
    # calls <= 44 (c <= 8.8), high from 45 (c > 8.8: no gap); the periods (even calls, not divisible by 5) are ours
    assert plan(latte, 10) == {"spatial": [4, 6, 8, 10], "temporal": [4, 6, 8, 10], "uncond": [4, 6, 7, 8, 9],
                               "low": [1, 2, 3, 4, 5, 6, 7, 8], "high": [9, 10],
                               "weight": {4: 0.5, 6: 0.5, 8: 0.5, 10: 0.5}}
    at_100 = plan(latte, 100)  # c > 30, even; low to 88, high from 89
    assert at_100["spatial"][:3] == [32, 34, 36] and (at_100["low"][-1], at_100["high"][0]) == (88, 89)
    open_sora = plan(FasterCache(configs_from_spec("fastercache", published("open-sora"))[0]), 10)
    # c stands for their 3c: attention on even c > 7 / 3, uncond from c > 11 / 3, low c <= 25 / 3, high c > 19 / 3;
    # the ramp 0.9 (call - 7) / 20 read at their call 3c
    assert open_sora["spatial"] == [4, 6, 8, 10] and open_sora["uncond"] == [4, 6, 7, 8, 9]
    assert open_sora["low"] == list(range(1, 9)) and open_sora["high"] == [7, 8, 9, 10]
    assert open_sora["weight"] == pytest.approx({c: 0.9 * (3 * c - 7) / 20 for c in (4, 6, 8, 10)})
    # Open-Sora-Plan v1.1: 6 PNDM steps are 15 calls, for their 159 (150 steps): attention c > 44 * 15 / 159 = 4.15,
    # uncond c > 39 * 15 / 159 = 3.68, low c <= 130 * 15 / 159 = 12.26
    osp = plan(FasterCache(configs_from_spec("fastercache", published("open-sora-plan-v110", "open-sora-plan"))[0]), 15)
    assert osp["spatial"] == [5, 7, 8, 10, 11, 13, 14] and osp["uncond"] == [4, 5, 7, 8, 9, 10, 11, 13, 14, 15]
    assert osp["low"] == list(range(1, 13)) and osp["high"] == [13, 14, 15]
    cog = plan(FasterCache(configs_from_spec("fastercache", published("cogvideox-5b", "cogvideox"))[0]), 10)
    assert cog["spatial"] == [4, 5, 7, 8, 10] and cog["temporal"] == [] and cog["uncond"] == [4, 6, 7, 8, 9]
    assert cog["low"] == list(range(1, 9)) and cog["high"] == [6, 7, 8, 9, 10]  # c <= 40 / 5, c > 29 / 5


def test_diffusers_defaults_names_and_calls():
    for models in (("latte",), ("open-sora-plan-v120", "open-sora-plan"), ("cogvideox-5b", "cogvideox")):
        c = configs_from_spec("fastercache-diffusers", published(*models))[0]
        # diffusers 0.42.1 FasterCacheConfig defaults; Open-Sora-Plan v1.2 (no authors' settings) has them by default
        assert (c.spatial, c.temporal, c.uncond) == (((-1.0, 681.0), 2), None, ((-1.0, 641.0), 5))
        assert (c.alpha_low, c.alpha_high, c.low_window, c.high_window) == (1.1, 1.1, (99.0, 901.0), (-1.0, 301.0))
        assert c.weight == 0.5 and c.compound and c.calls is None
    assert configs_from_spec("fastercache", published("open-sora-plan-v120", "open-sora-plan"))[0] == c
    plain = FasterCacheConfig()  # the class: diffusers' windows, the paper's formula
    assert plain.weight is None and not plain.compound and plain.spatial == ((-1.0, 681.0), 2)
    # the authors' bounds, other periods
    c = configs_from_spec("fastercache-3-4t", published("cogvideox-2b", "cogvideox"))[0]
    assert c.spatial == Calls(18, every=3) == c.temporal and c.uncond == Calls(18, every=4) and c.weight == 0.3
    c = configs_from_spec("fastercache-3", published("latte"))[0]  # Latte computes on odd calls: the phase modulo 3
    assert c.spatial == Calls(16, every=3, phase=1) == c.temporal and c.uncond == Calls(18, every=5)
    c = configs_from_spec("fastercache-3-4t", published("open-sora-plan-v120", "open-sora-plan"))[0]
    assert c.spatial == ((-1.0, 681.0), 3) == c.temporal and c.uncond == ((-1.0, 641.0), 4)
    for bad in ("fastercache-0", "fastercache-x", "fastercache-1-2-3"):
        with pytest.raises(ValueError, match="unknown cache"):
            configs_from_spec(bad, published("latte"))
    with pytest.raises(ValueError, match="lo < hi"):
        FasterCacheConfig(uncond=((500, 100), 2))
    with pytest.raises(ValueError, match="first <= last"):
        FasterCacheConfig(uncond=Calls(10, 5))
    with pytest.raises(ValueError, match="phase < every"):
        FasterCacheConfig(uncond=Calls(10, every=2, phase=2))
    with pytest.raises(ValueError, match="no period"):
        FasterCacheConfig(low_window=Calls(1, 40, every=2))
    # a schedule from YAML / a dict: Calls and Ramp written as mappings
    c = FasterCacheConfig(spatial={"first": 8, "every": 2, "phase": 1}, weight={"zero": 7, "span": 20, "scale": 0.9},
                          low_window={"first": 1, "last": 25}, calls=30)
    assert (c.spatial, c.weight, c.low_window) == (Calls(8, every=2, phase=1), Ramp(7, 20, 0.9), Calls(1, 25))


def test_authors_config_round_trips_through_yaml(tmp_path):
    from videosys.models import config_class

    config = config_class("latte")(preset="tiny", cache=[configs_from_spec("fastercache", published("latte"))[0]])
    config.to_yaml(tmp_path / "c.yaml")
    assert type(config).from_yaml(str(tmp_path / "c.yaml")).cache_configs() == config.cache_configs()


def test_window_boundaries_are_strict_and_the_plan_follows_index_and_timestep():
    timesteps = [999, 900, 681, 680, 641, 640, 300, 99, 10, -1]
    fc = FasterCache(FasterCacheConfig())  # spatial every 2 in (-1, 681), uncond every 5 in (-1, 641)
    fc.begin(timesteps)
    # attention: odd indices strictly inside (-1, 681): 3 (680), 5 (640), 7 (99); 681 (index 2) and -1 are outside
    assert [i for i in range(len(timesteps)) if fc.reuses("spatial", i)] == [3, 5, 7]
    # uncond skipped: index % 5 != 0 strictly inside (-1, 641): 5 (640) is a multiple of 5, 4 (641) is on the edge
    assert [i for i, s in enumerate(fc.uncond_plan) if s] == [6, 7, 8]
    assert not any(fc.reuses("temporal", i) for i in range(len(timesteps)))  # temporal off by default
    fc.begin(timesteps, refresh_steps=(7,))
    assert [i for i in range(len(timesteps)) if fc.reuses("spatial", i)] == [3, 5]
    assert [i for i, s in enumerate(fc.uncond_plan) if s] == [6, 8]
    # frequency weights: alpha_low strictly inside (99, 901), alpha_high strictly inside (-1, 301)
    expected = {999: (1, 1), 901: (1, 1), 900: (1.1, 1), 301: (1.1, 1), 300: (1.1, 1.1), 99: (1, 1.1), -1: (1, 1)}
    for t, weights in expected.items():
        fc.set_step(0, t)
        assert fc.frequency_weights() == weights, t


def test_uncond_period_counts_model_calls_and_the_window_follows_the_step():
    # Calls 1..6 of 10 (calls=None: this generation's), uncond skipped on even 1-based calls (phase 1 computes)
    fc = FasterCache(FasterCacheConfig(spatial=None, uncond=Calls(1, 6, every=2, phase=1)))
    fc.begin([999 - 99 * i for i in range(10)])
    assert [i for i, s in enumerate(fc.uncond_plan) if s] == [1, 3, 5]  # a call every step: call = index + 1
    # a step method left steps 1-2 uncalled: step 3 is the 2nd call (even: skips), step 4 the 3rd (computes);
    # step 6 is outside the window whatever the call count
    assert [fc._skips_uncond(i, call) for i, call in ((3, 1), (4, 2), (6, 3), (0, 0))] == [True, False, False, False]
    assert fc.last_skip == 5  # the last step that may skip for some count (not only at the step's own count)
    timestep = FasterCache(FasterCacheConfig(spatial=None, uncond=(ALWAYS, 3)))  # diffusers' form: 0-based count
    timestep.begin([999 - 99 * i for i in range(10)])
    assert [timestep._skips_uncond(7, call) for call in (3, 4, 5)] == [False, True, True]


def test_weight_ramp_and_extrapolation_from_the_last_two_computed():
    assert [ramp_weight(i, 5) for i in range(5)] == [0, 0.25, 0.5, 0.75, 1]
    assert ramp_weight(0, 1) == 0
    fc = FasterCache(FasterCacheConfig(spatial=(ALWAYS, 2)))
    n = 7
    fc.begin([900 - 100 * i for i in range(n)])
    outputs, seen = [torch.full((2, 3), float(i * i)) for i in range(n)], []
    for i in range(n):
        fc.set_step(i, fc.timesteps[i])
        seen.append(fc.module(Site("spatial", "spatial", 0), lambda: outputs[i]))
    # steps 0-2 compute (step 1 has one computed output only); 3 and 5 extrapolate from (1, 2) and (2, 4)
    assert [torch.equal(seen[i], outputs[i]) for i in range(n)] == [True, True, True, False, True, False, True]
    assert torch.allclose(seen[3], outputs[2] + 0.5 * (outputs[2] - outputs[1]))  # w(3 of 7) = 0.5
    assert torch.allclose(seen[5], outputs[4] + (5 / 6) * (outputs[4] - outputs[2]))  # not from the extrapolated 3
    assert fc.stats() == {"spatial_computed": 5, "spatial_reused": 2}
    # cross-attention and MLPs are never touched
    assert fc.module(Site("cross", "spatial", 0), lambda: outputs[0]) is outputs[0]
    assert fc.module(Site("mlp", "spatial", 0), lambda: outputs[0]) is outputs[0]


def test_cond_only_calls_extrapolate_from_the_cond_half_of_full_batches():
    fc = FasterCache(FasterCacheConfig(spatial=(ALWAYS, 2), weight=1.0))
    fc.begin([900, 800, 700, 600])
    full = [torch.cat([torch.full((1, 2), -1.0 - i), torch.full((1, 2), float(i))]) for i in range(4)]  # [uncond; cond]
    site_batch, site_cond = Site("full", "full", 0), Site("full", "full", 0, "cond")
    fc.set_step(0, 900)
    fc.module(site_batch, lambda: full[0])
    fc.set_step(1, 800)  # a cond-only step with one computed output: computes, learns the 2:1 row ratio
    assert torch.equal(fc.module(site_cond, lambda: full[1][1:]), full[1][1:]) and fc.cond_ratio == 2
    fc.set_step(2, 700)
    fc.module(site_batch, lambda: full[2])
    fc.set_step(3, 600)  # extrapolated from the cond row of step 2's batch and the cond output of step 1
    got = fc.module(site_cond, lambda: pytest.fail("must not compute"))
    assert torch.equal(got, torch.full((1, 2), 2.0 + (2.0 - 1.0)))
    fc.set_step(3, 600)  # a full batch cannot be extrapolated from a cond-only output: computes
    assert torch.equal(fc.module(site_batch, lambda: full[3]), full[3])


def test_authors_rows_option_reads_the_first_rows_of_full_batches():
    """cond_rows="first": a cond-only call extrapolates from the first rows of a cached full batch, as the authors'
    scripts slice it (the uncond rows there), to reproduce their numbers; the default reads the cond rows."""
    full = [torch.cat([torch.full((1, 2), -1.0 - i), torch.full((1, 2), float(i))]) for i in range(3)]  # [uncond; cond]
    site_batch, site_cond = Site("full", "full", 0), Site("full", "full", 0, "cond")
    got = {}
    for rows in ("cond", "first"):
        fc = FasterCache(FasterCacheConfig(spatial=(ALWAYS, 2), weight=1.0, cond_rows=rows))
        fc.begin([900, 800, 700, 600])
        for i, t in enumerate((900, 800, 700)):  # full calls (step 1 computes: one output stored so far)
            fc.set_step(i, t)
            fc.module(site_batch, lambda: full[i])
        fc.set_step(3, 600)  # cond-only: extrapolated from steps 1 and 2's full batches
        fc.cond_ratio = 2  # what the stack hook learns from the [uncond; cond] and cond-only batch rows
        got[rows] = fc.module(site_cond, lambda: pytest.fail("must not compute"))
    assert torch.equal(got["cond"], torch.full((1, 2), 2.0 + (2.0 - 1.0)))  # cond rows: 1, 2
    assert torch.equal(got["first"], torch.full((1, 2), -3.0 + (-3.0 + 2.0)))  # uncond rows: -2, -3
    with pytest.raises(ValueError, match="cond_rows"):
        FasterCacheConfig(cond_rows="uncond")
    fc = FasterCache(FasterCacheConfig(spatial=(ALWAYS, 2), weight=1.0, cond_rows="first"))
    fc.begin([900, 800])
    fc.cond_ratio = 1  # a CFG-parallel cond rank
    with pytest.raises(ValueError, match="CFG-parallel"):
        fc._view((full[0][1:], "batch"), "cond")
    pipe = tiny_pipeline("latte")  # end to end with the authors' Latte schedule: the two options differ
    runs = {}
    for rows in ("cond", "first"):
        pipe.set_cache({"method": "fastercache", "cond_rows": rows})
        runs[rows] = pipe.generate(PROMPT, seed=0, num_frames=4, num_inference_steps=50)
    assert runs["first"].stats["fastercache"] == runs["cond"].stats["fastercache"]
    assert not torch.equal(runs["first"].latents, runs["cond"].latents)


def test_frequency_split_against_hand_computed_values():
    mask = low_pass_mask(10, 12, "cpu")  # radius min(10, 12) // 5 = 2 around (x, y) = (6, 5)
    hand = torch.tensor([[(x - 6) ** 2 + (y - 5) ** 2 <= 4 for x in range(12)] for y in range(10)])
    assert torch.equal(mask, hand) and int(mask.sum()) == 13
    assert low_pass_mask(10, 12, "cpu") is mask  # built once per shape and device ...
    for size in range(20, 40):  # ... and bounded: a long-lived server sees many sizes
        low_pass_mask(size, size, "cpu")
    assert fastercache._low_pass_mask.cache_info().currsize <= 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 10, 12, generator=g)
    low, high = split_frequencies(x)
    assert torch.allclose(from_spectrum(low + high), x, atol=1e-5)
    constant = torch.full((1, 10, 12), 3.0)  # all energy at DC, the centre: low only
    low, high = split_frequencies(constant)
    assert high.abs().max() < 1e-4 and abs(low[0, 5, 6].real - 3.0 * 120) < 1e-3
    checker = torch.tensor([[(-1.0) ** (x + y) for x in range(12)] for y in range(10)])[None]  # Nyquist: high only
    low, high = split_frequencies(checker)
    assert low.abs().max() < 1e-4 and abs(high[0, 0, 0].real - 120) < 1e-3
    # a smooth wave (1 cycle) is low, a fast one (5 cycles across 12) high, matching the mask by hand
    y, xs = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    slow, fast = torch.cos(2 * math.pi * xs / 12)[None], torch.cos(2 * math.pi * 5 * xs / 12)[None]
    assert torch.allclose(from_spectrum(split_frequencies(slow)[0]), slow, atol=1e-5)
    assert torch.allclose(from_spectrum(split_frequencies(fast)[1]), fast, atol=1e-5)


def test_cfg_supply_rebuilds_uncond_with_weighted_deltas():
    g = torch.Generator().manual_seed(1)
    uncond, cond, later = (torch.randn(1, 2, 3, 10, 10, generator=g) for _ in range(3))
    for compound in (False, True):
        fc = FasterCache(FasterCacheConfig(uncond=(ALWAYS, 3), alpha_low=1.5, alpha_high=0.5, low_window=(500, 2000),
                                           high_window=(-1, 500), compound=compound))
        fc.begin([900, 800, 700, 400])
        fc.cfg_observe(uncond, cond)
        (d_low, d_high), delta = fc.deltas, uncond - cond
        d_low_x, d_high_x = from_spectrum(d_low), from_spectrum(d_high)
        assert torch.allclose(d_low_x + d_high_x, delta, atol=1e-5)
        fc.set_step(1, 800)  # low window: uncond = cond + 1.5 low + 1.0 high
        assert torch.allclose(fc.cfg_supply(later), later + 1.5 * d_low_x + d_high_x, atol=1e-5)
        fc.set_step(2, 700)  # the paper: weights on the stored deltas; diffusers: they compound (1.5 ** 2)
        k = 2.25 if compound else 1.5
        assert torch.allclose(fc.cfg_supply(later), later + k * d_low_x + d_high_x, atol=1e-5)


# ---- the loop: which calls run -----------------------------------------------------------------------

def count_calls(pipe) -> list:
    calls, forward = [], pipe.transformer.forward

    def counted(x, *a, **k):
        calls.append(x.shape[0])
        return forward(x, *a, **k)
    pipe.transformer.forward = counted
    return calls


def test_forced_schedule_skips_exactly_the_predicted_uncond_calls():
    pipe = tiny_pipeline("cogvideox")
    steps = 10
    pipe.set_cache({"method": "fastercache", "spatial": None, "uncond": ((-1, 700), 3)})
    calls = count_calls(pipe)
    out = pipe.generate(PROMPT, seed=0, num_inference_steps=steps)
    ts = [float(t) for t in pipe.scheduler.timesteps]
    predicted = [i for i in range(1, steps) if i % 3 and -1 < ts[i] < 700]
    assert predicted and len(predicted) < steps - 1
    assert calls == [1 if i in predicted else 2 for i in range(steps)]  # cond alone on the predicted steps
    assert out.stats["fastercache"] == {"uncond_computed": steps - len(predicted), "uncond_skipped": len(predicted)}


def usable_reuses(attention: list, skipped: list, calls: int) -> list:
    """The calls of `attention` that extrapolate: those whose last two computed outputs the call can read (a
    cond-only call reads a full batch's cond rows; a full call cannot read a cond-only output: it computes)."""
    computed, reused = [], []
    for c in range(1, calls + 1):
        branch = "cond" if c in skipped else "batch"
        if c in attention and len(computed) >= 2 and all(b in (branch, "batch") for b in computed[-2:]):
            reused.append(c)
        else:
            computed.append(branch)
    return reused


# family, config fields, generate kwargs, model calls, the authors' attention / uncond calls at that count (scaled
# as test_other_step_counts_scale_the_authors_bounds_and_keep_their_periods lists them)
SHORT = {"latte": ("latte", {}, dict(num_frames=4, num_inference_steps=10), 10, [4, 6, 8, 10], [4, 6, 7, 8, 9]),
         "open-sora": ("open-sora", {}, dict(num_inference_steps=10), 10, [4, 6, 8, 10], [4, 6, 7, 8, 9]),
         "open-sora-plan-v110": ("open-sora-plan", dict(version="v110"), dict(num_inference_steps=6), 15,
                                 [5, 7, 8, 10, 11, 13, 14], [4, 5, 7, 8, 9, 10, 11, 13, 14, 15]),
         "cogvideox": ("cogvideox", {}, dict(num_inference_steps=10), 10, [4, 5, 7, 8, 10], [4, 6, 7, 8, 9]),
         # the authors' own step count: their rules as transcribed above
         "latte-50": ("latte", {}, dict(num_frames=4, num_inference_steps=50), 50,
                      [c for c in range(1, 51) if AUTHORS_RULES[("latte",)][1](c)],
                      [c for c in range(1, 51) if AUTHORS_RULES[("latte",)][2](c)])}


@pytest.mark.parametrize("name", list(SHORT))
def test_default_schedule_runs_the_predicted_calls_in_every_family(name):
    family, fields, kwargs, calls, attention, skipped = SHORT[name]
    pipe = tiny_pipeline(family, **fields)
    pipe.set_cache("fastercache")
    batches = count_calls(pipe)
    stats = pipe.generate(PROMPT, seed=0, **kwargs).stats["fastercache"]
    assert batches == [1 if c in skipped else 2 for c in range(1, calls + 1)]  # one call per step: call = step + 1
    assert (stats["uncond_skipped"], stats["uncond_computed"]) == (len(skipped), calls - len(skipped))
    reused = usable_reuses(attention, skipped, calls)
    assert reused  # the planned calls, less any full call right after a cond-only one (it computes)
    for kind in ("spatial",) if family == "cogvideox" else ("spatial", "temporal"):
        total = stats[f"{kind}_reused"] + stats[f"{kind}_computed"]
        assert total % calls == 0 and stats[f"{kind}_reused"] == len(reused) * (total // calls), kind
    assert family != "cogvideox" or "temporal_computed" not in stats


def test_stats_and_progress_bar(monkeypatch):
    pipe = tiny_pipeline("latte")
    pipe.set_cache({"method": "fastercache", "spatial": (ALWAYS, 2), "temporal": (ALWAYS, 2), "uncond": (ALWAYS, 2)})
    postfixes = []

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self):
            pass

        def set_postfix_str(self, text, refresh=True):
            postfixes.append(text)
    monkeypatch.setattr(pipe, "progress", lambda total, desc: Bar())
    out = pipe.generate(PROMPT, seed=0, num_inference_steps=8, num_frames=4)
    s, layers = out.stats["fastercache"], len(pipe.transformer.transformer_blocks)
    assert s["uncond_skipped"] == 4 and s["uncond_computed"] == 4  # odd steps run cond alone
    assert s["spatial_reused"] > 0 and s["spatial_reused"] + s["spatial_computed"] == 8 * layers
    assert s["temporal_reused"] == s["spatial_reused"]
    reused = s["spatial_reused"] + s["temporal_reused"]
    assert postfixes[-1] == f"fastercache attn {reused}/{16 * layers} reused, uncond 4/8 skipped"
    assert len(postfixes) == 8


# ---- against diffusers' FasterCache on diffusers' CogVideoX -------------------------------------------

TIMESTEPS = torch.tensor([999, 899, 799, 699, 599, 499, 399, 299, 199, 99])
SCALE, STEP = 10.0, 0.3


def diffusers_loop(ref, x, text, **settings):
    """diffusers' hooks on its transformer (none without settings), driven as CogVideoXPipeline drives them
    (current_timestep, cache_context "cond_uncond", [uncond; cond] batch); a plain Euler-like update."""
    from diffusers import FasterCacheConfig as DiffusersConfig, apply_faster_cache

    now = {}
    if settings:
        apply_faster_cache(ref, DiffusersConfig(current_timestep_callback=lambda: now["t"], tensor_format="BFCHW",
                                                **settings))
    for t in TIMESTEPS:
        now["t"] = t
        with ref.cache_context("cond_uncond"), torch.no_grad():
            pred = ref(hidden_states=torch.cat([x, x]), encoder_hidden_states=text, timestep=t.expand(2),
                       return_dict=False)[0].float()
        uncond, cond = pred.chunk(2)
        x = x - STEP * (uncond + SCALE * (cond - uncond))
    return x


def our_loop(ours, x, text, config):
    """Ours through the shared denoise loop (VideoSysPipeline.denoise and its CFG hook point)."""
    pipe = VideoSysPipeline.__new__(VideoSysPipeline)
    pipe.transformer, pipe.parallel, pipe.config = ours, ParallelState(), types.SimpleNamespace(progress_bar=False)
    pipe.device = torch.device("cpu")
    ours.disable_cache()
    ours.enable_cache(config)

    def predict(model_in, i, t, text):
        return ours(model_in, text, t.expand(model_in.shape[0])).float()
    with torch.no_grad():
        out = pipe.denoise(x, TIMESTEPS, predict, lambda pred, i, t, lat: lat - STEP * pred, (text,), True, SCALE)
    return out, ours.active_cache("fastercache").stats()


def reference_case(ours_settings: dict, diffusers_settings: dict):
    """|ours - diffusers| over what diffusers' cache changes (|diffusers cached - uncached|): near 0 = the
    same method; the tiny random model's cond and uncond differ little, so a raw latent difference would hide
    a wrong delta."""
    ref, ours, g = pair(rotary=False, seed=3)
    with torch.no_grad():  # larger attention outputs: the text (all that tells cond from uncond) matters more
        for name, p in ref.named_parameters():
            if ".to_v." in name or ".to_out." in name or "proj_out" in name:
                p.mul_(4)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 4, 8, 12, generator=g)
    text = torch.randn(2, TEXT_LEN, TEXT_DIM, generator=g)  # [uncond; cond]
    uncached = diffusers_loop(ref, x, text)
    expected = diffusers_loop(ref, x, text, **diffusers_settings)
    got, stats = our_loop(ours, x, text, FasterCacheConfig(**ours_settings))
    effect = (expected - uncached).abs().max()
    assert effect > 5e-4 * uncached.abs().max()  # the cache does change the result (well above fp32 noise)
    return (got - expected).abs().max() / effect, stats


CFG_ONLY = dict(spatial_attention_block_skip_range=None, unconditional_batch_skip_range=3,
                unconditional_batch_timestep_skip_range=(-1, 1000))  # low window (99, 901), high (-1, 301)


def test_cfg_cache_matches_diffusers_and_the_paper_weights_differ_from_its_compounding():
    diff, stats = reference_case(dict(spatial=None, uncond=((-1, 1000), 3), compound=True), CFG_ONLY)
    assert stats == {"uncond_computed": 4, "uncond_skipped": 6}  # steps 1 2 4 5 7 8 run cond alone
    assert diff < 1e-4
    # the paper's weights (not compounding over consecutive skipped steps): ~20% of the cache's effect
    diff, _ = reference_case(dict(spatial=None, uncond=((-1, 1000), 3)), CFG_ONLY)
    assert diff > 0.05


def test_attention_reuse_matches_diffusers_where_both_agree_and_differs_where_it_extrapolates_an_extrapolation():
    # uncond every 2nd step, attention every 2nd step from t < 750: diffusers skips attention on cond-only steps
    # only, which here are exactly our reused steps; with weight 0 both copy the last computed cond output
    ours = dict(spatial=((-1, 750), 2), uncond=((-1, 1000), 2), weight=0.0, compound=True)
    theirs = dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 750),
                  unconditional_batch_skip_range=2, unconditional_batch_timestep_skip_range=(-1, 1000),
                  attention_weight_callback=lambda _: 0.0)
    diff, stats = reference_case(ours, theirs)
    assert stats["spatial_reused"] == 4 * 2 and stats["uncond_skipped"] == 5  # steps 3 5 7 9 (t < 750, odd) x 2 layers
    assert diff < 1e-4
    # weight 0.3: diffusers extrapolates from its last two calls (the previous one an extrapolation itself),
    # the paper (and ours) from the last two computed outputs
    diff, _ = reference_case({**ours, "weight": 0.3}, {**theirs, "attention_weight_callback": lambda _: 0.3})
    assert diff > 0.05


# ---- parallel: CFG ranks and sequence shards against one process ---------------------------------------

RUNS = {"latte": dict(seed=1, num_frames=5, height=48, width=80, num_inference_steps=8),
        # 3 latent frames of 3x5 patches: 45 video tokens, so sp=2 pads the last shard
        "cogvideox": dict(seed=1, num_frames=9, height=48, width=80, num_inference_steps=8)}
SPEC = {"method": "fastercache", "spatial": (ALWAYS, 2), "temporal": (ALWAYS, 2), "uncond": (ALWAYS, 3)}
_one_process = {}


def one_process(family: str):
    if family not in _one_process:
        pipe = tiny_pipeline(family)
        pipe.set_cache(SPEC)
        blocks = pipe.transformer.transformer_blocks
        _one_process[family] = pipe.generate(PROMPT, **RUNS[family]), len(blocks)
    return _one_process[family]


@pytest.mark.timeout(300)
# CFG-Cache across cfg ranks once (the CFG loop is the families' shared one); attention reuse on sp shards for both
# ways of sharding (DSP: Latte, Ulysses: CogVideoX)
@pytest.mark.parametrize("family,cfg_parallel", [("latte", True), ("latte", False), ("cogvideox", False)],
                         ids=["latte-cfg2", "latte-sp2", "cogvideox-sp2"])
@pytest.mark.slow
def test_parallel_matches_one_process(family, cfg_parallel, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref, layers = one_process(family)
    finally:
        torch.set_num_threads(threads)
    skipped = ref.stats["fastercache"]["uncond_skipped"]
    assert skipped == 5 and ref.stats["fastercache"]["spatial_reused"] > 0
    with VideoSysEngine(tiny_config(family, num_gpus=2, cfg_parallel=cfg_parallel)) as engine:
        engine.set_cache(SPEC)
        out = engine.generate(PROMPT, **RUNS[family])  # a rank waiting on a skipped collective would hang here
    scale = max(1.0, float(ref.latents.abs().max()))
    assert (out.latents - ref.latents).abs().max() <= 1e-4 * scale
    assert (out.video.float() - ref.video.float()).abs().max() <= 1.0
    stats = out.stats["fastercache"]  # rank 0's
    assert (stats["uncond_skipped"], stats["uncond_computed"]) == (skipped, 8 - skipped)
    if cfg_parallel:  # rank 0 runs uncond: its attention ran (computed or reused) on the full steps only
        assert stats["spatial_computed"] + stats.get("spatial_reused", 0) == (8 - skipped) * layers
    else:
        assert stats == ref.stats["fastercache"]
