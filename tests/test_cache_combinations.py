"""Several cache methods at once (registry.check_combination, Cache.acts_at): methods at different hook points
both act, each as it does alone; two at the same point are refused before any compute, on every surface."""

import pytest
import torch

from videosys import LatteConfig
from videosys.cache import configs_from_spec
from videosys.cache.fastercache import Calls, FasterCache, FasterCacheConfig
from videosys.cache.hooks import Cache
from videosys.cache.taylorseer import TaylorSeerConfig

from conftest import PROMPT, published, tiny_pipeline

RUN = dict(seed=0, num_frames=4, num_inference_steps=12)


def test_fastercache_cfg_part_alone_acts_at_the_cfg_point_only():
    (cfg,) = configs_from_spec("fastercache-cfg", published("latte"))
    # the authors' Latte schedule, uncond and windows kept
    default = FasterCacheConfig.for_model(published("latte")["fastercache"])
    assert cfg.spatial is None and cfg.temporal is None and cfg.uncond == default.uncond == Calls(18, every=5)
    assert (cfg.low_window, cfg.high_window, cfg.calls, cfg.compound) == (Calls(1, 44), Calls(45), 50, True)
    assert configs_from_spec("fastercache-cfg-3", published("latte"))[0].uncond == Calls(18, every=3)
    osp = published("open-sora-plan-v120", "open-sora-plan")  # no authors' settings: diffusers' window
    assert configs_from_spec("fastercache-cfg-3", osp)[0].uncond == ((-1.0, 641.0), 3)
    assert FasterCache.acts_at(cfg) == {"cfg"}
    assert FasterCache.acts_at(FasterCacheConfig()) == {"module", "cfg"}
    assert FasterCache.acts_at(FasterCacheConfig(uncond=None)) == {"module"}
    # its stack hook only reads the batch rows: by the default rule (every hook defined) it would claim "stack"
    assert FasterCache.stack is not None and "stack" in Cache.acts_at.__func__(FasterCache, default)
    with pytest.raises(ValueError, match="unknown cache"):
        configs_from_spec("fastercache-cfg-0", published("latte"))


@pytest.mark.parametrize("spec", ["easycache+fastercache", "easycache+fastercache-cfg", "foca-3+fastercache-cfg",
                                  "pab+fastercache-cfg"])
def test_fastercache_joins_methods_at_other_points(spec):
    names = [type(c).__name__ for c in configs_from_spec(spec, published("latte"))]
    assert len(names) == 2 and "FasterCacheConfig" in names


def test_a_stack_method_and_fastercache_both_act():
    """EasyCache (stack) beside the whole FasterCache (module + cfg, its stack hook observing): all three act."""
    pipe = tiny_pipeline("latte")
    pipe.set_cache("easycache-2.0+fastercache")  # a high threshold: reuses on the tiny random model
    out = pipe.generate(PROMPT, **RUN)
    easy, faster = out.stats["easycache"], out.stats["fastercache"]
    assert easy["reused_steps"] > 0 and faster["uncond_skipped"] > 0 and faster["spatial_reused"] > 0
    assert torch.isfinite(out.latents).all()


@pytest.mark.parametrize("module_method", ["foca-3"])  # taylorseer-3 beside it: refused (measured, REFUSED_PAIRS)
def test_a_module_method_and_a_cfg_method_both_act(module_method):
    """Each keeps its own decisions: the CFG part skips the same uncond branches as alone, the module method
    forecasts on the same steps; together the output is neither one's."""
    pipe = tiny_pipeline("latte")
    alone = {}
    for spec in (module_method, "fastercache-cfg"):
        pipe.set_cache(spec)
        alone[spec] = pipe.generate(PROMPT, **RUN)
    pipe.set_cache(f"{module_method}+fastercache-cfg")
    both = pipe.generate(PROMPT, **RUN)
    name = module_method.split("-")[0]
    cfg_stats = both.stats["fastercache"]
    assert cfg_stats == alone["fastercache-cfg"].stats["fastercache"] and cfg_stats["uncond_skipped"] > 0
    assert both.stats[name]["forecast_step_indices"] == alone[module_method].stats[name]["forecast_step_indices"]
    assert both.stats[name]["forecast_modules"] > 0
    for out in alone.values():
        assert not torch.equal(both.latents, out.latents)
    assert torch.isfinite(both.latents).all()
    postfix = pipe.transformer.cache_postfix()
    assert name in postfix and "uncond" in postfix


FORECAST_I2 = (4, 6, 8, 10)  # the steps forecast-i2 skips at 12 steps (refused beside FasterCache: a stub skips them)


def test_a_step_method_and_a_cfg_method_both_act_and_cfg_cache_counts_model_calls(skip_steps):
    """A step method running the model on steps 0-3, then odd steps and the last (forecast-i2's); CFG-Cache's uncond
    every 2nd *call* keeps running uncond among them (by step index it would run on even steps only: never after
    step 2)."""
    pipe = tiny_pipeline("latte")
    batches = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    cfg_every_2 = FasterCacheConfig(spatial=None, uncond=((-1, 1000), 2))  # every timestep inside the window
    pipe.set_cache(cfg_every_2)
    alone = pipe.generate(PROMPT, **RUN)
    assert alone.stats["fastercache"] == {"uncond_computed": 6, "uncond_skipped": 6}  # calls = steps
    batches.clear()
    pipe.set_cache([skip_steps(FORECAST_I2), cfg_every_2])
    out = pipe.generate(PROMPT, **RUN)
    assert batches == [2, 1, 2, 1, 2, 1, 2, 1]  # steps 0 1 2 3 5 7 9 11: uncond on every 2nd call
    assert out.stats["fastercache"] == {"uncond_computed": 4, "uncond_skipped": 4}


def test_the_authors_uncond_period_counts_model_calls_next_to_a_step_method(skip_steps):
    """fastercache-cfg-2 (Latte: Calls(18, every=2) of their 50, here from step 5 of 12): alone it skips uncond on
    the odd 1-based steps 5-11; beside forecast-i2 (model on steps 0-3, 5, 7, 9, 11: calls 1-8) on the odd calls
    5 and 7 (steps 5 and 9). Their "call" read as the step (6, 8, 10, 12: all even) would skip none."""
    pipe = tiny_pipeline("latte")
    batches = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    pipe.set_cache("fastercache-cfg-2")
    alone = pipe.generate(PROMPT, **RUN)
    assert batches == [2, 2, 2, 2, 1, 2, 1, 2, 1, 2, 1, 2]  # steps 4, 6, 8, 10 = calls 5, 7, 9, 11
    assert alone.stats["fastercache"] == {"uncond_computed": 8, "uncond_skipped": 4}
    batches.clear()
    pipe.set_cache([skip_steps(FORECAST_I2), *configs_from_spec("fastercache-cfg-2", published("latte"))])
    out = pipe.generate(PROMPT, **RUN)
    assert batches == [2, 2, 2, 2, 1, 2, 1, 2]
    assert out.stats["fastercache"] == {"uncond_computed": 6, "uncond_skipped": 2}


@pytest.mark.parametrize("spec, point", [
    ("taylorseer-3+fastercache", "module"),  # FasterCache's attention reuse is on by default
    ("foca-3+pab", "module"),
    ("teacache-fast+fbcache", "stack"),
    ("forecast-i2+fastercache-cfg", "refused"),  # measured worse than either alone (registry.REFUSED_PAIRS)
    ("forecast-0.2+teacache-slow", "refused"),
    ("teacache-slow+pab", "added"),  # worse than both although their errors just add
    (["forecast-i2", {"method": "forecast", "interval": 3}], None),  # the same method twice
])
def test_two_methods_at_one_point_are_refused_before_any_compute(spec, point):
    match = ("are refused together: the output forecast .* dB" if point == "refused"
             else "are refused together: .* less than either method alone" if point == "added"
             else f"both act at the '{point}' hook point" if point else "enabled once")
    with pytest.raises(ValueError, match=match):
        configs_from_spec(spec, published("latte"))
    with pytest.raises(ValueError, match=match):
        LatteConfig(preset="tiny", cache=spec)  # the config refuses it when built
    pipe = tiny_pipeline("latte")
    pipe.set_cache("teacache-slow")
    with pytest.raises(ValueError, match=match):
        pipe.set_cache(spec)
    assert list(pipe.transformer.caches) == ["teacache"]  # nothing changed
    with pytest.raises(ValueError, match="both act at the 'stack'"):  # enabling one at a time: refused too
        pipe.transformer.enable_cache(configs_from_spec("fbcache", published("latte"))[0])
    pipe.transformer.enable_cache(TaylorSeerConfig(interval=3))  # a different point: joins
    assert list(pipe.transformer.caches) == ["teacache", "taylorseer"]


def _record_site(pipe, name: str, kind: str = "spatial", index: int = 0) -> list:
    """(step, the call's branch, state name, computed?, output) of method `name` at one module, per call."""
    transformer, calls = pipe.transformer, []
    cache = transformer.caches[name]
    for hook in ("module", "refresh"):
        bound = getattr(cache, hook, None)
        if bound is None:
            continue

        def spy(site, compute, bound=bound, hook=hook):
            ran = []
            out = bound(site, lambda: ran.append(1) or compute())
            if site.kind == kind and site.index == index and site.block == "spatial":
                calls.append((cache.step, transformer.cache_branch, site.branch, bool(ran), out.clone()))
            return out
        setattr(cache, hook, spy)
    return calls


def test_a_module_method_under_cfg_cache_keeps_each_branch_on_its_own_rows(monkeypatch):
    """TaylorSeer (order 0: a forecast reuses the module's last computed rows; full steps 0-2, 6, 10) beside
    CFG-Cache skipping uncond on odd steps: a cond-only forecast (step 7) continues from the cond rows of the
    batched step 6, not from the last cond-only call (step 1, as when each call kept its own state); a batched
    step whose branches CFG-Cache keeps for the next cond-only step computes both branches. The rows plumbing is
    every module method's (FoCa, PAB); the users' TaylorSeer + CFG-Cache pair is refused by measurement, lifted here
    because order 0 makes a forecast exactly the state's rows."""
    from videosys.cache import registry

    monkeypatch.setattr(registry, "REFUSED_PAIRS", {})
    pipe = tiny_pipeline("latte")
    taylor = TaylorSeerConfig(interval=4, max_order=0, warmup=3)
    cfg = FasterCacheConfig(spatial=None, uncond=((-1, 1000), 2))
    pipe.set_cache([taylor, cfg])
    calls = _record_site(pipe, "taylorseer")
    pipe.generate(PROMPT, **RUN)
    by_step = {}
    for step, branch, state, ran, out in calls:
        by_step.setdefault(step, []).append((branch, state, ran, out))
    assert [b for b, *_ in by_step[7]] == ["cond"] and [s for _, s, *_ in by_step[6]] == ["uncond", "cond"]
    (_, _, ran7, out7), = by_step[7]
    assert not ran7  # forecast
    cond6 = by_step[6][1][3]
    assert torch.equal(out7, cond6)  # the cond rows of the batched step 6
    assert not torch.equal(out7, by_step[1][0][3])
    for step in (4, 8):  # batched forecast steps of TaylorSeer before a cond-only step: both branches computed
        assert all(ran for _, _, ran, _ in by_step[step])
    for step in (3, 5, 9, 11):  # cond-only forecast steps
        assert [ran for _, _, ran, _ in by_step[step]] == [False]


def test_every_pair_the_bench_found_worse_than_both_is_refused():
    """The rule of issue #39: no allowed pair gives a video worse than both of its members on either demo model
    (`videosys bench --pairs`, benchmarks/); a pair found worse on one is refused with its measured figures."""
    import json
    from pathlib import Path

    worse, measured = set(), set()
    for report in ("bench_pairs_demo.json", "bench_pairs_demo_skip.json"):
        rows = json.loads((Path(__file__).parents[1] / "benchmarks" / report).read_text())["pairs"]
        worse |= {r["pair"] for r in rows if r["worse_than_both"]}
        measured |= {r["pair"] for r in rows}
    assert worse and measured - worse  # the reports measured both kinds
    for preset in ("demo", "demo-skip"):
        settings = LatteConfig(preset=preset).published_cache_settings()
        for pair in sorted(worse):
            with pytest.raises(ValueError, match=r"are refused together: .* \d+\.\d+ dB"):
                configs_from_spec(pair, settings)
        for pair in sorted(measured - worse):
            configs_from_spec(pair, settings)  # the rest stay allowed
