"""The cache registry and its hook points: a method defined here, registered with one call, reaches every
family's block stack and module calls (single process and sp=2), parses by name everywhere, and nests with
the shipped methods."""

import multiprocessing
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from videosys.cache import Cache, choices, configs_from_spec, register, spec_to_plain, sweep_names
from videosys.cache.registry import unregister
from videosys.models import config_class

from conftest import published
from distributed import run_distributed

PROMPT = "a red circle moving to the right"
STEPS = 4
FAMILIES = {  # name -> (family, config fields, generate kwargs)
    "latte": ("latte", dict(preset="tiny"), dict(num_frames=4)),
    "open-sora": ("open-sora", dict(preset="tiny"), {}),
    "open-sora-plan-v110": ("open-sora-plan", dict(preset="tiny", version="v110"), {}),
    "open-sora-plan-v120": ("open-sora-plan", dict(preset="tiny"), {}),
    "cogvideox-2b": ("cogvideox", dict(preset="tiny"), {}),
    "cogvideox-5b": ("cogvideox", dict(preset="tiny-5b"), {}),
}
# the module calls of one block-stack pass, per block index: "kind/block" -> count (tiny presets: 2 layers)
PER_LAYER = {
    "latte": {"spatial/spatial": 1, "cross/spatial": 1, "mlp/spatial": 1, "temporal/temporal": 1,
              "mlp/temporal": 1},
    "open-sora": {"spatial/spatial": 1, "cross/spatial": 1, "mlp/spatial": 1, "temporal/temporal": 1,
                  "cross/temporal": 1, "mlp/temporal": 1},
    "open-sora-plan-v120": {"full/full": 1, "cross/full": 1, "mlp/full": 1},
    "cogvideox-2b": {"full/full": 1, "mlp/full": 1},
}
PER_LAYER["open-sora-plan-v110"] = PER_LAYER["latte"]  # LatteT2V is Latte's transformer
PER_LAYER["cogvideox-5b"] = PER_LAYER["cogvideox-2b"]


@dataclass
class CountingConfig:
    """Counts what it sees at each hook point and reuses nothing."""

    split_stack: bool = True  # run the stack as its first unit, then the rest (the First-Block-Cache path)


class Counting(Cache):
    def __init__(self, config: CountingConfig):
        self.config = config
        self.begin([])

    @classmethod
    def acts_at(cls, config):  # an observer: it replaces nothing, so it may join any point
        return frozenset()

    def begin(self, timesteps, refresh_steps=()):
        self.counts, self.steps, self.indicators = Counter(), [], []

    def set_step(self, index, timestep):
        self.steps.append(index)

    def stack(self, stack):
        self.counts["stack"] += 1
        self.indicators.append(tuple(stack.indicator().shape))
        if self.config.split_stack:
            return stack.rest(*stack.first(*stack.streams))
        return stack.run(*stack.streams)

    def module(self, site, compute):
        self.counts[f"{site.kind}/{site.block}"] += 1
        self.counts[f"index{site.index}"] += 1
        return compute()

    def stats(self):
        return dict(self.counts)


def counting_from_name(arg, models):
    return CountingConfig(split_stack=arg == "split") if arg in ("split", "whole") else None




def build(name: str):
    family, fields, run = FAMILIES[name]
    config = config_class(family)(progress_bar=False, **fields)
    return config.pipeline_cls.from_config(config), run


def expected_counts(name: str, calls: int, layers: int) -> dict:
    out = {"stack": calls, **{k: v * calls * layers for k, v in PER_LAYER[name].items()}}
    per_index = sum(PER_LAYER[name].values()) * calls
    out.update({f"index{i}": per_index for i in range(layers)})
    return out


def generate_both(pipe, run):
    pipe.set_cache(None)
    plain = pipe.generate(PROMPT, seed=0, num_inference_steps=STEPS, **run)
    pipe.set_cache("counting")
    counted = pipe.generate(PROMPT, seed=0, num_inference_steps=STEPS, **run)
    return plain, counted, pipe.transformer.active_cache("counting")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_method_defined_here_reaches_every_hook_point(name):
    pipe, run = build(name)
    plain, counted, state = generate_both(pipe, run)
    calls = counted.stats["steps"]  # transformer calls (PNDM's warm-up adds steps on v1.1)
    layers = len(pipe.transformer.transformer_blocks if hasattr(pipe.transformer, "transformer_blocks")
                 else pipe.transformer.spatial_blocks)
    assert counted.stats["counting"] == expected_counts(name, calls, layers)
    assert state.steps == list(range(calls))  # set_step once per step, in order
    assert len(state.indicators) == calls and all(len(s) >= 2 for s in state.indicators)
    assert torch.equal(counted.latents, plain.latents)  # first unit + rest == the whole stack, nothing reused


def _sp2(rank, world, names):
    import torch

    from videosys.core.parallel import init_parallel

    register_test_methods()  # this spawned rank's registry
    torch.manual_seed(0)
    state = init_parallel(False, "cpu")
    out = {}
    for name in names:
        pipe, run = build(name)
        pipe.set_parallel(state)
        plain, counted, _ = generate_both(pipe, run)
        out[name] = (plain.latents, counted.latents, counted.stats["counting"], counted.stats["steps"],
                     tuple(counted.video.shape))
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sp2_every_rank_sees_every_hook_point():
    """sp=2 (gloo): each rank runs every module on its shard, so both see the single-process counts; only
    rank 0 decodes (rank 1's video is empty, its latents the same)."""
    names = list(FAMILIES)
    ranks = run_distributed(_sp2, 2, names)
    for name in names:
        pipe, _ = build(name)
        layers = len(pipe.transformer.transformer_blocks if hasattr(pipe.transformer, "transformer_blocks")
                     else pipe.transformer.spatial_blocks)
        for rank in ranks:
            plain, counted, counts, calls, _ = rank[name]
            assert counts == expected_counts(name, calls, layers), (name, counts)
            assert torch.equal(counted, plain), name
        assert torch.equal(ranks[0][name][1], ranks[1][name][1])
        video0, video1 = ranks[0][name][4], ranks[1][name][4]
        assert video1 == (1, 0, 0, 0, 3) and video0[0] == 1 and min(video0[1:]) > 0, (name, video0, video1)


def test_names_parse_everywhere_from_the_registration(tmp_path, capsys):
    from videosys import LatteConfig
    from videosys.cli import build_parser, make_config

    assert "counting" in choices() and "counting-<split|whole>" in choices()
    assert "counting-whole" in sweep_names()
    assert configs_from_spec("counting-whole", published("latte")) == [CountingConfig(split_stack=False)]
    assert configs_from_spec({"method": "counting", "split_stack": False},
                             published("latte")) == [CountingConfig(False)]
    with pytest.raises(ValueError, match="counting-<split|whole>"):
        configs_from_spec("counting-sideways", published("latte"))
    config = LatteConfig(preset="tiny", cache=[CountingConfig(split_stack=False), "pab"])
    assert spec_to_plain(config.cache)[0] == {"method": "counting", "split_stack": False}
    config.to_yaml(tmp_path / "c.yaml")
    assert LatteConfig.from_yaml(str(tmp_path / "c.yaml")).cache_configs() == config.cache_configs()
    args = build_parser().parse_args(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "p",
                                      "--cache", "counting-whole,pab"])
    assert [type(c).__name__ for c in make_config(args).cache_configs()] == ["CountingConfig", "PABConfig"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    assert "counting-<split|whole>" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already registered"):
        register("counting", type("Other", (), {"__dataclass_fields__": {}}), Counting, for_model=lambda m: None)


def test_methods_nest_in_the_order_enabled():
    """Outermost first: counting before PAB sees every module call; after PAB, only those PAB computes."""
    pipe, run = build("latte")
    pipe.set_cache("pab")
    alone = pipe.generate(PROMPT, seed=0, num_inference_steps=12, **run)
    pipe.set_cache(["counting", "pab"])
    outer = pipe.generate(PROMPT, seed=0, num_inference_steps=12, **run)
    pipe.set_cache(["pab", "counting"])
    inner = pipe.generate(PROMPT, seed=0, num_inference_steps=12, **run)
    pab = alone.stats["pab"]
    assert pab["spatial_reused"] > 0 and outer.stats["pab"] == inner.stats["pab"] == pab
    assert torch.equal(outer.latents, alone.latents) and torch.equal(inner.latents, alone.latents)
    assert outer.stats["counting"]["spatial/spatial"] == pab["spatial_computed"] + pab["spatial_reused"]
    assert inner.stats["counting"]["spatial/spatial"] == pab["spatial_computed"]
    assert inner.stats["counting"]["cross/spatial"] == pab["cross_computed"]
    mlp = inner.stats["counting"]["mlp/spatial"] + inner.stats["counting"]["mlp/temporal"]
    assert mlp == pab["mlp_computed"]


def test_a_stack_method_outside_teacache_sees_every_step():
    """At the block stack, counting outermost runs every step; TeaCache inside decides as it does alone."""
    pipe, run = build("latte")
    pipe.set_cache("teacache-fast")
    alone = pipe.generate(PROMPT, seed=0, num_inference_steps=10, **run)
    pipe.set_cache([CountingConfig(split_stack=False), "teacache-fast"])
    both = pipe.generate(PROMPT, seed=0, num_inference_steps=10, **run)
    tea = alone.stats["teacache"]
    assert tea["reused_steps"] > 0 and both.stats["teacache"] == tea
    assert torch.equal(both.latents, alone.latents)
    assert both.stats["counting"]["stack"] == 10
    assert both.stats["counting"]["spatial/spatial"] == tea["computed_steps"] * 2  # 2 layers, skipped steps none


# ---- the CFG-branch hook point -------------------------------------------------------------------------------
@dataclass
class UncondReuseConfig:
    """On the listed steps skip the uncond branch and rebuild it as cond + the last computed (uncond - cond)."""

    steps: tuple[int, ...] = ()


class UncondReuse(Cache):
    def __init__(self, config: UncondReuseConfig):
        self.config = config
        self.begin([])

    @classmethod
    def acts_at(cls, config):  # its stack hook only counts
        return frozenset({"cfg"})

    def begin(self, timesteps, refresh_steps=()):
        self.step, self.delta, self.counts = 0, None, Counter()

    def set_step(self, index, timestep):
        self.step = index

    def stack(self, stack):  # counts this rank's forwards
        self.counts[f"forward_{stack.branch}"] += 1
        return stack.run(*stack.streams)

    def cfg_skip(self):
        return self.step in self.config.steps

    def cfg_supply(self, cond):
        self.counts["supplied"] += 1
        return cond + self.delta

    def cfg_observe(self, uncond, cond):
        self.counts["observed"] += 1
        self.delta = uncond - cond

    def stats(self):
        return dict(self.counts)




def register_test_methods():
    """The one registration call per method (here two methods, so two calls)."""
    register("counting", CountingConfig, Counting, for_model=lambda models: CountingConfig(),
             parse=counting_from_name, names=("counting",), sweep=("counting-whole",), syntax="counting-<split|whole>")
    register("uncond-reuse", UncondReuseConfig, UncondReuse, for_model=lambda models: UncondReuseConfig())


@pytest.fixture(scope="module", autouse=True)
def registered_methods():
    """Registered while this module's tests run only, so other tests see the shipped methods alone."""
    register_test_methods()
    yield
    unregister("counting")
    unregister("uncond-reuse")


# Spawned processes (engine workers, run_distributed ranks) import this module to unpickle its configs and
# functions: they register on import.
if multiprocessing.parent_process() is not None:
    register_test_methods()

CFG_RUN = dict(seed=0, num_frames=4, num_inference_steps=6)


def latte_tiny(**kw):
    return config_class("latte")(preset="tiny", progress_bar=False, **kw)


def test_cfg_hook_skips_the_uncond_branch_and_supplies_it():
    pipe = latte_tiny().pipeline_cls.from_config(latte_tiny())
    batches = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    plain = pipe.generate(PROMPT, **CFG_RUN)
    pipe.set_cache(UncondReuseConfig())  # observes every step, skips none: the uncached output
    observed = pipe.generate(PROMPT, **CFG_RUN)
    assert torch.equal(observed.latents, plain.latents)
    assert observed.stats["uncond-reuse"] == {"forward_batch": 6, "observed": 6}
    batches.clear()
    pipe.set_cache(UncondReuseConfig(steps=(2, 4)))
    skipped = pipe.generate(PROMPT, **CFG_RUN)
    assert batches == [2, 2, 1, 2, 1, 2]  # the skipped steps run the cond branch alone
    assert skipped.stats["uncond-reuse"] == {"forward_batch": 4, "forward_cond": 2, "observed": 4, "supplied": 2}
    assert not torch.equal(skipped.latents, plain.latents)
    # negative prompt = prompt: uncond == cond, so the rebuilt uncond (cond alone + a zero delta) guides
    # exactly as the computed one: the cond-only call got the cond conditioning
    same = dict(CFG_RUN, negative_prompt=PROMPT)
    pipe.set_cache(None)
    plain = pipe.generate(PROMPT, **same)
    pipe.set_cache(UncondReuseConfig(steps=(2, 4)))
    rebuilt = pipe.generate(PROMPT, **same)
    assert rebuilt.stats["uncond-reuse"]["supplied"] == 2
    assert torch.allclose(rebuilt.latents, plain.latents, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cfg_parallel_uncond_rank_skips_its_forward():
    """cfg=2: rank 0 (uncond) runs no forward on a skipped step, nobody waits on it, and the result is the
    single process's; TeaCache inside keeps a separate state for the cond branch run alone (its distances
    then reduce over the cond rank's sp group only, or the ranks would deadlock)."""
    from videosys import VideoSysEngine

    specs = {"reuse": [UncondReuseConfig(steps=(2, 4))], "reuse+tea": [UncondReuseConfig(steps=(2, 4)), "teacache-1.0"]}
    single = {}
    pipe = latte_tiny().pipeline_cls.from_config(latte_tiny())
    for name, spec in specs.items():
        pipe.set_cache(spec)
        single[name] = pipe.generate(PROMPT, **CFG_RUN)
    with VideoSysEngine(latte_tiny(num_gpus=2, cfg_parallel=True)) as engine:
        for name, spec in specs.items():
            engine.set_cache(spec)
            out = engine.generate(PROMPT, **CFG_RUN)
            assert out.stats["uncond-reuse"] == {"forward_batch": 4, "observed": 4, "supplied": 2}, name
            scale = max(1.0, float(single[name].latents.abs().max()))
            assert (out.latents - single[name].latents).abs().max() <= 1e-4 * scale, name
    assert single["reuse"].stats["uncond-reuse"]["forward_cond"] == 2
    # TeaCache on rank 0 (the uncond rank) decided on its 4 batched calls; one process also on the 2 cond calls
    tea_rank0, tea_single = out.stats["teacache"], single["reuse+tea"].stats["teacache"]
    assert tea_rank0["computed_steps"] + tea_rank0["reused_steps"] == 4
    assert tea_single["computed_steps"] + tea_single["reused_steps"] == 6


# ---- the family contract: published settings and legacy switches -------------------------------------------
def test_every_family_setting_builds_its_methods_config():
    """Each number a family publishes (its cache_settings.py) is a valid config of the method it is for."""
    from videosys.cache import METHODS
    from videosys.models import FAMILIES

    for family in FAMILIES:
        for method, table in config_class(family).cache_settings.items():
            for key, fields in table.items():
                assert isinstance(METHODS[method].for_model(fields), METHODS[method].config_cls), (family, key)


def test_legacy_switches_are_declared_by_their_methods():
    from videosys.cache import registry

    assert registry.legacy_switches() == ["enable_teacache", "enable_pab"]
    config = config_class("latte")(preset="tiny", enable_teacache=True, teacache_thresh=0.3)
    assert registry.legacy_specs(config) == ["teacache-0.3"]
    assert [type(c).__name__ for c in config.cache_configs()] == ["TeaCacheConfig"]
    with pytest.raises(ValueError, match="refused together"):  # both switches: the pair is refused (REFUSED_PAIRS)
        config_class("latte")(preset="tiny", enable_teacache=True, enable_pab=True)

