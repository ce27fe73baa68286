"""Open-Sora 1.2 accelerated: TeaCache, PAB, DSP and CFG parallel on STDiT3 and its pipeline.

Exactness where a setting disables a cache, schedules predicted by hand, PAB's plan on the release's
own 30-step schedule, DSP on one block (the engine against one process: tests/test_parallel_families.py).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from videosys import OpenSoraConfig, OpenSoraPipeline
from videosys.cache import PABConfig, TeaCacheConfig, configs_from_spec
from videosys.core import comm
from videosys.models.open_sora.pipeline import published_timestep
from videosys.cache import pab as pab_lib
from videosys.models.open_sora.transformer import STDiT3, STDiT3Block, STDiT3Config
from videosys.schedulers.rectified_flow import RectifiedFlowScheduler

from conftest import published
from distributed import generate_per_cache

PROMPT = "a red circle moving to the right"
# 17 frames -> 5 latent frames and 48x48 px -> a 3x3 patch grid: neither divides by 2, so DSP pads
# both the frames it shards and the patches temporal attention shards
RUN = dict(seed=1, num_frames=17, height=48, width=48, num_inference_steps=8)
CACHES = ("none", "teacache-fast", "pab")
RELEASE = dict(height=480, width=854, num_frames=51)  # the release's default video (480p 9:16, "2s")


pytestmark = pytest.mark.usefixtures("one_thread_per_rank")  # conftest: one thread per spawned rank


def tiny_config(**kw):
    return OpenSoraConfig(preset="tiny", progress_bar=False, **kw)


@pytest.fixture(scope="module")
def tiny():
    return OpenSoraPipeline.from_config(tiny_config())


@pytest.fixture(scope="module")
def single(tiny):
    """One process, every cache of the parallel test (and the uncached reference of the exactness tests)."""
    out = generate_per_cache(tiny, CACHES, PROMPT, **RUN)
    tiny.set_cache(None)
    return out


# ---- configs --------------------------------------------------------------------------------------
def test_configs_take_the_published_open_sora_settings():
    config = tiny_config()
    assert config.cache_models() == ("open-sora",)
    (tea,) = tiny_config(cache="teacache-fast").cache_configs()
    assert tea.threshold == 0.2 and tea.coefficients == published("open-sora")["teacache"]["coefficients"]
    (pab,) = tiny_config(enable_pab=True).cache_configs()
    window = (450.0, 930.0)
    assert (pab.spatial, pab.temporal, pab.cross) == ((window, 2), (window, 4), (window, 6))
    assert pab.mlp == {t: ((0, 1, 2, 3, 4), 2) for t in (676.0, 788.0, 864.0)}


def test_pab_paper_variants_by_name():
    default = PABConfig.for_model(published("open-sora")["pab"])
    assert configs_from_spec("pab-246", published("open-sora")) == [default]
    for name, ranges in (("pab-357", (3, 5, 7)), ("pab-579", (5, 7, 9))):
        (pab,) = configs_from_spec(name, published("open-sora"))
        assert (pab.spatial[1], pab.temporal[1], pab.cross[1]) == ranges
        assert pab.spatial[0] == pab.temporal[0] == pab.cross[0] == (450.0, 930.0) and pab.mlp == default.mlp
    with pytest.raises(ValueError, match="pab-<ranges>"):
        configs_from_spec("pab-35", published("open-sora"))


def test_mlp_timesteps_are_steps_of_the_release_schedule_in_published_form():
    """676 / 788 / 864 are bf16-rounded, truncated timesteps of the 480p 2s 30-step schedule; the floats
    never equal them, so the pipeline hands the caches this form."""
    schedule = RectifiedFlowScheduler().timesteps(30, **RELEASE)
    keys = [published_timestep(t) for t in schedule]
    assert [keys.index(t) for t in (864, 788, 676)] == [13, 17, 21]
    assert not {676.0, 788.0, 864.0} & set(schedule)
    assert (published_timestep(863.64), published_timestep(674.86), published_timestep(1000.0)) == (864, 676, 1000)


def test_pab_cross_broadcast_reuses_each_blocks_own_output(monkeypatch):
    """Spatial block i and temporal block i both cross-attend, with different weights. VideoSys keeps one
    cached output per block instance: with only cross-attention broadcast, what every block adds on a
    broadcast step is that block's own output of the last computing step."""
    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(hidden_size=32, depth=2, num_heads=2, caption_channels=12, model_max_length=6,
                                input_sq_size=64)).eval()
    model.enable_cache(PABConfig(spatial=None, temporal=None, cross=((0, 1000), 2), mlp={}))
    running, last_computed, reused = [], {}, []
    block_forward, module = STDiT3Block.forward, pab_lib.PAB.module

    def forward(self, *args, **kwargs):  # which block instance is running
        running.append(self)
        try:
            return block_forward(self, *args, **kwargs)
        finally:
            running.pop()

    def spy_module(pab, site, compute):  # PAB at the module hook point
        if site.kind != "cross":
            return module(pab, site, compute)
        computed = []
        out = module(pab, site, lambda: computed.append(1) or compute())
        if computed:
            last_computed[running[-1]] = out
        else:
            reused.append((running[-1], out))
        return out

    monkeypatch.setattr(STDiT3Block, "forward", forward)
    monkeypatch.setattr(pab_lib.PAB, "module", spy_module)
    timesteps = [900.0, 700.0, 500.0, 300.0]  # steps 1 and 3 broadcast
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 6, 12, generator=g)
    model.cache_begin(timesteps)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            model.cache_step(i, t)
            model(torch.randn(2, 4, 3, 4, 4, generator=g), torch.full((2,), t), y)
            if i % 2 == 0:  # a computing step: the two stacks' outputs differ, so a mix-up would show
                for spatial, temporal in zip(model.spatial_blocks, model.temporal_blocks):
                    assert (last_computed[spatial] - last_computed[temporal]).abs().max() > 1e-3
            else:
                assert len(reused) == 4 * (i // 2 + 1)
                for block, out in reused[-4:]:
                    assert torch.equal(out, last_computed[block]), (block.kind, block.index)
    assert model.active_cache("pab").stats() == {"cross_computed": 8, "cross_reused": 8, "mlp_computed": 16,
                                 "spatial_computed": 8, "temporal_computed": 8}


# ---- exactness and schedules -------------------------------------------------------------------------
def test_teacache_threshold_zero_and_pab_range_one_are_exact(tiny, single):
    uncached = single["none"]
    tiny.set_cache(TeaCacheConfig(threshold=0.0, coefficients=published("open-sora")["teacache"]["coefficients"]))
    out = tiny.generate(PROMPT, **RUN)
    assert out.stats["teacache"]["reused_steps"] == 0
    assert torch.equal(out.latents, uncached.latents) and torch.equal(out.video, uncached.video)

    # range 1 recomputes every step, whatever the window; the tiny schedule visits none of the MLP timesteps
    always = ((0, 1001), 1)
    tiny.set_cache(PABConfig.for_model(published("open-sora")["pab"], spatial=always, temporal=always, cross=always))
    out = tiny.generate(PROMPT, **RUN)
    keys = tiny.transformer.active_cache("pab").timesteps
    tiny.set_cache(None)
    assert len(keys) == RUN["num_inference_steps"] and not set(keys) & {676.0, 788.0, 864.0}
    depth, steps = tiny.transformer.config.depth, RUN["num_inference_steps"]
    assert out.stats["pab"] == {"cross_computed": 2 * depth * steps, "mlp_computed": 2 * depth * steps,
                                "spatial_computed": depth * steps, "temporal_computed": depth * steps}
    assert torch.equal(out.latents, uncached.latents) and torch.equal(out.video, uncached.video)


def test_teacache_forced_schedule(tiny):
    """A constant polynomial adds 0.04 per step: with threshold 0.1 the stack runs every third step
    (0.12 >= 0.1), and on the first and last steps."""
    tiny.set_cache(TeaCacheConfig(threshold=0.1, coefficients=(0.04,)))
    calls = []
    run_blocks = tiny.transformer.run_blocks
    tiny.transformer.run_blocks = lambda *a, **k: calls.append(1) or run_blocks(*a, **k)
    try:
        out = tiny.generate(PROMPT, **RUN)
    finally:
        del tiny.transformer.run_blocks
        tiny.set_cache(None)
    n = RUN["num_inference_steps"]
    predicted = [i for i in range(1, n - 1) if i % 3 != 0]
    assert out.stats["teacache"]["reused_step_indices"] == predicted == [1, 2, 4, 5]
    assert out.stats["teacache"]["computed_steps"] == n - len(predicted) == len(calls)


def test_teacache_indicator_is_the_first_spatial_blocks_modulated_embedding():
    """The indicator: t2i_modulate(norm1(patches + positions), shift_msa, scale_msa) of spatial block 0."""
    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(hidden_size=32, depth=2, num_heads=2, caption_channels=12, model_max_length=6,
                                input_sq_size=64)).eval()
    model.enable_cache(TeaCacheConfig(threshold=0.1, coefficients=published("open-sora")["teacache"]["coefficients"]))
    model.cache_begin([1000.0, 500.0])
    model.cache_step(0, 1000.0)
    seen, captured = {}, {}
    skip = model.active_cache("teacache").skip

    def spy(indicator, **kw):
        seen["indicator"] = indicator
        return skip(indicator, **kw)

    model.active_cache("teacache").skip = spy
    model.x_embedder.register_forward_hook(lambda m, i, o: captured.setdefault("patches", o))
    model.t_block.register_forward_hook(lambda m, i, o: captured.setdefault("t_mlp", o))
    x, y = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 6, 12)
    with torch.no_grad():
        model(x, torch.tensor([700.0, 700.0]), y, fps=24, height=64, width=64)
    pos = model.pos_embed(4, 4, 64 / model.config.input_sq_size, 4, x.device)  # the 4 x 4 patch grid of 64 px
    h = captured["patches"] + pos  # (B, T, S, C)
    c = 32
    t_mlp, table = captured["t_mlp"], model.spatial_blocks[0].scale_shift_table
    shift, scale = table[0] + t_mlp[:, :c], table[1] + t_mlp[:, c:2 * c]
    expected = F.layer_norm(h, (c,), eps=1e-6) * (1 + scale[:, None, None]) + shift[:, None, None]
    assert seen["indicator"].shape == (2, 3, 16, c)
    assert torch.allclose(seen["indicator"], expected, atol=1e-5)


def test_pab_plan_on_the_release_schedule(tiny, monkeypatch):
    """The tiny model on the release's own 30-step schedule (480p 2s): PAB's counts follow the published
    rule step by step, the MLPs of blocks 0-4 are reused on the two steps after 864, 788 and 676, and a
    broadcast temporal attention skips its two all-to-alls."""
    run = dict(seed=2, num_frames=17, height=32, width=32, num_inference_steps=30)
    def ratio(height, width, num_frames):  # the timestep transform's r before its scale
        return math.sqrt(height * width / 512**2) * math.sqrt(num_frames // 17 * 5)

    monkeypatch.setattr(tiny.scheduler, "transform_scale", ratio(**RELEASE) / ratio(32, 32, 17))
    all_to_all, calls = comm.all_to_all, []
    monkeypatch.setattr(comm, "all_to_all", lambda *a, **k: calls.append(1) or all_to_all(*a, **k))
    tiny.set_cache("pab")
    try:
        out = tiny.generate(PROMPT, **run)
        pab = tiny.transformer.active_cache("pab")
    finally:
        tiny.set_cache(None)
    keys = pab.timesteps
    assert keys == [float(published_timestep(t)) for t in RectifiedFlowScheduler().timesteps(30, **RELEASE)]

    depth, n = tiny.transformer.config.depth, 30
    inside = [450 < t < 930 for t in keys]
    reused = {kind: sum(1 for i in range(n) if inside[i] and i % every) for kind, every in
              (("spatial", 2), ("temporal", 4), ("cross", 6))}
    mlp_steps = [14, 15, 18, 19, 22, 23]  # skip 2 after steps 13 (864), 17 (788), 21 (676)
    mlp_reused = len(mlp_steps) * 2 * min(5, depth)  # spatial and temporal MLPs of blocks 0-4
    assert [i for i, blocks in enumerate(pab.mlp_reuse) if blocks] == mlp_steps
    expected = {"spatial_reused": depth * reused["spatial"], "temporal_reused": depth * reused["temporal"],
                "cross_reused": 2 * depth * reused["cross"], "mlp_reused": mlp_reused}
    for kind, per_step in (("spatial", depth), ("temporal", depth), ("cross", 2 * depth), ("mlp", 2 * depth)):
        expected[f"{kind}_computed"] = per_step * n - expected[f"{kind}_reused"]
    assert out.stats["pab"] == dict(sorted(expected.items()))
    assert reused == {"spatial": 9, "temporal": 13, "cross": 14}  # steps 9-25 lie inside (450, 930)
    assert len(calls) == 2 * out.stats["pab"]["temporal_computed"]


# ---- DSP (the engine against one process: tests/test_parallel_families.py) -----------------------
def _dsp_forward(rank, world):
    """On each rank of an sp=2 mesh: the frames a block sees, and the output against the same model unsharded."""
    from videosys.core.parallel import ParallelState, init_parallel

    torch.manual_seed(0)
    model = STDiT3(STDiT3Config(hidden_size=32, depth=2, num_heads=2, caption_channels=12, model_max_length=6,
                                input_sq_size=64)).eval()
    x, y = torch.randn(2, 4, 5, 6, 6), torch.randn(2, 6, 12)  # 5 frames, a 3x3 patch grid
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    x_mask = torch.tensor([[False, True, True, True, True]] * 2)  # a conditioning frame takes the t=0 modulation
    args = (x, torch.tensor([700.0, 700.0]), y, mask, x_mask)
    shapes = []
    model.temporal_blocks[1].register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    with torch.no_grad():
        model.set_parallel(init_parallel(False, "cpu"))
        sharded = model(*args, fps=24, height=48, width=48)
        model.set_parallel(ParallelState())
        whole = model(*args, fps=24, height=48, width=48)
    return shapes[0], float((sharded - whole).abs().max())


@pytest.mark.slow
def test_dsp_shards_frames_and_reproduces_the_unsharded_model():
    from distributed import run_distributed

    (shape0, err0), (shape1, err1) = run_distributed(_dsp_forward, 2)
    assert shape0 == shape1 == (2, 3, 9, 32)  # 5 frames padded to 6: 3 per rank, every patch
    assert max(err0, err1) < 1e-5
