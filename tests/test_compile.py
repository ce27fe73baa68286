"""compile=True: the whole forward with no cache, whole blocks with a stack cache, their branches with a module-hook
cache (tiny models).

Compiling on CPU is slow: few tests, each reusing its compiled pipeline across caches."""

import pytest
import torch
from torch._dynamo.eval_frame import _debug_get_cache_entry_list
from torch._dynamo.utils import counters

from videosys import LatteConfig, LattePipeline, VideoSysEngine
from videosys.models.latte.transformer import LatteBlock, LatteTransformer3DModel

from distributed import assert_same_as_single, generate_per_cache

pytestmark = pytest.mark.slow  # multi-process / compile: `pytest -m 'not slow'` leaves it out

RUN = dict(num_frames=4, num_inference_steps=4, seed=1)


def compiled_entries(fn) -> int:
    """How many compiled graphs dynamo holds for this function's code."""
    return len(_debug_get_cache_entry_list(fn.__code__))


def test_compiled_equals_eager_and_never_recompiles():
    # PAB acts at the module hook points around the compiled branches; First-Block-Cache at the stack
    config = dict(preset="tiny", progress_bar=False, cache=["pab", "fbcache"])
    eager = LattePipeline.from_config(LatteConfig(**config))
    compiled = LattePipeline.from_config(LatteConfig(**config, compile=True))
    block = compiled.transformer.transformer_blocks[0]
    assert "attn_branch" in vars(block) and "attn_branch" not in vars(eager.transformer.transformer_blocks[0])
    torch._dynamo.reset()
    counters.clear()
    expected = eager.generate("a red circle", **RUN)
    first = compiled.generate("a red circle", **RUN)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 3  # the branches did compile (one graph per branch kind, shared by every block)
    assert compiled_entries(LatteBlock.attn_branch) and not compiled_entries(LatteBlock.residual_stream)
    torch.testing.assert_close(first.latents, expected.latents, rtol=1e-4, atol=1e-4)
    for name in ("pab", "fbcache"):  # the same cache decisions
        assert first.stats[name] == expected.stats[name]
    assert first.stats["pab"]["spatial_reused"] > 0
    # a second generation of the same shape (new prompt and seed: new text, new memo) compiles nothing
    second = compiled.generate("a blue square", **{**RUN, "seed": 2})
    assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(second.latents, eager.generate("a blue square", **{**RUN, "seed": 2}).latents,
                               rtol=1e-4, atol=1e-4)


def test_compiled_path_follows_the_cache_and_switching_compiles_once():
    """No cache: the whole forward is compiled. A stack cache (TeaCache): each block's residual stream, whole.
    A module-hook method (PAB): the branches, its hooks between them. set_cache between generations switches
    the path; once each was compiled, switching back and forth compiles nothing."""
    eager = LattePipeline.from_config(LatteConfig(preset="tiny", progress_bar=False))
    compiled = LattePipeline.from_config(LatteConfig(preset="tiny", progress_bar=False, compile=True))
    torch._dynamo.reset()
    counters.clear()
    rounds = []
    for _ in range(2):
        for cache in ("teacache-slow", "pab", "none"):
            eager.set_cache(cache)
            compiled.set_cache(cache)
            got, expected = compiled.generate("a red circle", **RUN), eager.generate("a red circle", **RUN)
            torch.testing.assert_close(got.latents, expected.latents, rtol=1e-4, atol=1e-4)
            name = cache.split("-")[0]
            assert got.stats.get(name) == expected.stats.get(name), cache  # the same cache decisions
            if not rounds and cache == "teacache-slow":  # whole blocks: neither the forward nor a branch alone
                assert compiled_entries(LatteBlock.residual_stream)
                assert not compiled_entries(LatteBlock.attn_branch)
                assert not compiled_entries(LatteTransformer3DModel.forward)
            if not rounds and cache == "pab":
                assert got.stats["pab"]["spatial_reused"] > 0
                assert compiled_entries(LatteBlock.attn_branch)  # PAB's hooks sit between the compiled branches
                assert not compiled_entries(LatteTransformer3DModel.forward)
        assert compiled_entries(LatteTransformer3DModel.forward)  # no cache: the whole forward
        rounds.append(counters["stats"]["unique_graphs"])
    assert rounds[1] == rounds[0]  # the second round compiled nothing


@pytest.mark.timeout(600)
def test_sequence_parallel_compiled_equals_single_eager():
    """sp=2, compiled, whole blocks (no cache) and branches (PAB): the all-to-alls inside the temporal blocks
    run between compiled pieces; the output equals the single-process eager one."""
    run = dict(seed=1, num_frames=5, height=48, width=80, num_inference_steps=4)  # 5 frames: sp=2 pads
    tiny = dict(preset="tiny", progress_bar=False)
    single = generate_per_cache(VideoSysEngine(LatteConfig(**tiny)), ("none", "pab"), "a red circle", **run)
    engine = VideoSysEngine(LatteConfig(**tiny, num_gpus=2, compile=True))
    try:
        parallel = generate_per_cache(engine, ("none", "pab"), "a red circle", **run)
    finally:
        engine.shutdown()
    for cache in ("none", "pab"):
        assert_same_as_single(parallel[cache], single[cache], cache)


def test_cascadev_honours_compile():
    from videosys.models.cascadev import pipeline as cv
    from videosys.utils.demo_data import make_clip

    clip = make_clip("red", "circle", "right", num_frames=12, height=64, width=64, seed=3)
    eager = cv.CascadeVPipeline.from_config(cv.CascadeVConfig(preset="tiny", progress_bar=False))
    compiled = cv.CascadeVPipeline.from_config(cv.CascadeVConfig(preset="tiny", progress_bar=False, compile=True))
    assert all("forward" in vars(block) and "attn_branch" in vars(block) for block in compiled.transformer.blocks)
    torch._dynamo.reset()
    got, expected = compiled.reconstruct(clip, num_inference_steps=2), eager.reconstruct(clip, num_inference_steps=2)
    scale = expected.latents.abs().max()  # latents up to ~700: fp32 rounding of the whole graph, relative to them
    torch.testing.assert_close(got.latents / scale, expected.latents / scale, rtol=0, atol=1e-6)
    assert compiled_entries(cv.CascadeVTransformer.forward) == 1  # no cache: the whole DiT forward, one graph


@pytest.mark.parametrize("family", ["open-sora", "open-sora-plan"])
def test_whole_forward_for_open_sora_and_open_sora_plan(family):
    """No cache: the whole transformer forward is one graph (position / RoPE tables as graph constants), equal to
    eager, and a second generation of the same shape compiles nothing."""
    from videosys.models import config_class
    from videosys.models.open_sora.transformer import STDiT3
    from videosys.models.open_sora_plan.transformer import OpenSoraT2V

    forward = {"open-sora": STDiT3.forward, "open-sora-plan": OpenSoraT2V.forward}[family]
    config = config_class(family)
    engines = [VideoSysEngine(config(preset="tiny", progress_bar=False, compile=c)) for c in (False, True)]
    run = dict(num_inference_steps=4, seed=1)
    torch._dynamo.reset()
    counters.clear()
    expected, got = (e.generate("a red circle", **run) for e in engines)
    scale = expected.latents.abs().max()
    torch.testing.assert_close(got.latents / scale, expected.latents / scale, rtol=0, atol=1e-5)
    assert compiled_entries(forward) == 1 and counters["stats"]["unique_graphs"] == 1
    engines[1].generate("a blue square", **{**run, "seed": 2})
    assert counters["stats"]["unique_graphs"] == 1


def test_compile_flag_is_validated():
    with pytest.raises(ValueError, match="compile must be true or false"):
        LatteConfig(preset="tiny", compile="yes")


def _mlp(x, w1, b1, w2, b2, gate, r):
    """An adaLN MLP branch: r + gate * fc2(gelu_tanh(fc1(x))), and a projection whose use is a reduction."""
    h = torch.nn.functional.gelu(torch.nn.functional.linear(x, w1, b1), approximate="tanh")
    out = r + gate * torch.nn.functional.linear(h, w2, b2)
    return out, torch.nn.functional.linear(x, w1, b1).softmax(-1), torch.tanh(x)


def _mlp_inputs():
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 16, 8), (32, 8), (32,), (8, 32), (8,), (2, 1, 8), (2, 16, 8)]
    return [torch.randn(s, generator=g) * 3 for s in shapes]


def test_cpu_rewrites_change_the_work_not_the_values():
    """inductor_passes.CPU_REWRITES on the decomposed aten graph: 1 + tanh(u) of the GELU becomes 2 sigmoid(2u)
    (a bare tanh stays), a bias whose uses are all pointwise leaves its addmm (the one feeding softmax keeps it);
    the rewritten graph and compile=True's options give eager's values."""
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx

    from videosys.models.modules.compile import COMPILE_OPTIONS
    from videosys.models.modules.inductor_passes import CPU_REWRITES

    from videosys.models.modules.inductor_passes import CPURewrites

    inputs = _mlp_inputs()
    aten = torch.ops.aten
    gm = make_fx(_mlp, decomposition_table=select_decomp_table(), tracing_mode="fake")(*inputs)
    CPURewrites(("gelu",))(gm.graph)  # one rewrite alone (the bench's ablation): the addmms stay
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.sigmoid.default) == 1 and targets.count(aten.addmm.default) == 3
    gm = make_fx(_mlp, decomposition_table=select_decomp_table(), tracing_mode="fake")(*inputs)
    ops = lambda: [n.target for n in gm.graph.nodes if n.op == "call_function"]  # noqa: E731
    before = ops()
    assert before.count(aten.tanh.default) == 2 and before.count(aten.addmm.default) == 3
    CPU_REWRITES(gm.graph)
    gm.graph.lint()
    gm.recompile()
    after = ops()
    assert after.count(aten.tanh.default) == 1 and after.count(aten.sigmoid.default) == 1
    assert after.count(aten.addmm.default) == 1 and after.count(aten.mm.default) == 2
    expected = _mlp(*inputs)
    for got, want in zip(gm(*inputs), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    compiled = torch.compile(_mlp, options=COMPILE_OPTIONS)
    for got, want in zip(compiled(*inputs), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_whole_forward_compiles_once_and_each_model_gets_its_own_tables():
    """The position tables (constant_table) are constants of the compiled graph, guarded on their arguments: no
    second compile at the second call, and two models of one class whose tables differ (another base grid) each
    get theirs from the shared compiled forward."""
    from videosys.models.latte.transformer import LatteTransformerConfig
    from videosys.models.modules.compile import compile_regions

    small = dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, cross_attention_dim=32,
                 caption_channels=24, video_length=3)
    models = []
    for size in (8, 16):  # the same 8x8 latents on a base grid of 4 or 8 patches: other position tables
        torch.manual_seed(0)
        models.append(LatteTransformer3DModel(LatteTransformerConfig(**small, sample_size=size)).eval())
    g = torch.Generator().manual_seed(1)
    x, text, t = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 5, 24, generator=g), torch.tensor([500, 500])
    with torch.inference_mode():
        eager = [m(x, t, text) for m in models]
        assert (eager[0] - eager[1]).abs().max() > 1e-3  # the tables matter
        torch._dynamo.reset()
        counters.clear()
        for m in models:
            compile_regions(m)
        for step in range(2):
            for m, expected in zip(models, eager):
                torch.testing.assert_close(m(x, t, text), expected, rtol=1e-4, atol=1e-4)
            assert counters["stats"]["unique_graphs"] == 2  # one per model's tables, none at the second step
