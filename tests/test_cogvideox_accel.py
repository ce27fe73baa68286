"""CogVideoX acceleration: TeaCache, PAB, the published cache settings and the Ulysses head check.

Caches: settings that never reuse reproduce the uncached latents exactly, forced schedules reuse
exactly the predicted steps, both stream residuals are applied. Parallel (sp=2, cfg=2 and cfg=2 x sp=2
against one process, all-to-alls counted): tests/test_parallel_families.py.
"""

import json

import pytest
import torch

from videosys import CogVideoXConfig, CogVideoXPipeline
from videosys.cache import PABConfig, TeaCacheConfig
from videosys.core.parallel import ParallelState
from videosys.models.cogvideox.pipeline import tiny_transformer_config
from videosys.models.cogvideox.transformer import CogVideoXTransformer3DModel

from conftest import published

PROMPT = "a red circle moving to the right"
# 9 frames -> 3 latent frames of 3x5 patches (48x80 px): 45 video tokens, so sp=2 pads the last shard
RUN = dict(seed=1, num_frames=9, height=48, width=80, num_inference_steps=10)


def tiny(**kw):
    return CogVideoXConfig(**{"preset": "tiny", "progress_bar": False, **kw})


@pytest.fixture(scope="module")
def pipe():
    return CogVideoXPipeline.from_config(tiny())


@pytest.fixture(scope="module")
def uncached(pipe):
    pipe.set_cache("none")
    return pipe.generate(PROMPT, **RUN)


# ---- configuration ------------------------------------------------------------------------------

def test_published_cache_settings(tmp_path):
    assert tiny().cache_models()[0] == "cogvideox-2b" and tiny(preset="tiny-5b").cache_models()[0] == "cogvideox-5b"
    assert CogVideoXConfig().cache_models()[0] == "cogvideox-2b"  # THUDM/CogVideoX-2b, no download
    assert CogVideoXConfig(model_path="THUDM/CogVideoX-5b").cache_models()[0] == "cogvideox-5b"
    assert tiny().cache_models()[1] == "cogvideox"
    tea = tiny(preset="tiny-5b", cache="teacache-fast").cache_configs()
    assert tea == [TeaCacheConfig(threshold=0.2, coefficients=published("cogvideox-5b")["teacache"]["coefficients"])]
    coefficients_2b = published("cogvideox-2b")["teacache"]["coefficients"]
    assert tiny(enable_teacache=True).cache_configs()[0].coefficients == coefficients_2b
    pab = tiny(enable_pab=True).cache_configs()[0]
    assert pab.spatial == ((100.0, 850.0), 2) and pab.temporal is None and pab.cross is None and pab.mlp == {}
    # a local folder: its transformer config (RoPE or not) decides, whatever the folder is called
    for rotary, expected in ((True, "cogvideox-5b"), (False, "cogvideox-2b")):
        folder = tmp_path / f"model-{rotary}"
        (folder / "transformer").mkdir(parents=True)
        config = json.dumps({"use_rotary_positional_embeddings": rotary})
        (folder / "transformer" / "config.json").write_text(config)
        assert CogVideoXConfig(model_path=str(folder)).cache_models()[0] == expected


def test_heads_must_divide_by_sp():
    model = CogVideoXTransformer3DModel(tiny_transformer_config(rotary=False))  # 2 heads
    model.set_parallel(ParallelState(sp_size=2))
    for sp in (3, 4):
        with pytest.raises(ValueError, match=rf"num_attention_heads=2 is not divisible by sp size {sp}"):
            model.set_parallel(ParallelState(sp_size=sp))


# ---- TeaCache -----------------------------------------------------------------------------------

def test_teacache_threshold_zero_is_exact(pipe, uncached):
    pipe.set_cache(TeaCacheConfig(threshold=0.0, coefficients=published("cogvideox-2b")["teacache"]["coefficients"]))
    out = pipe.generate(PROMPT, **RUN)
    assert out.stats["teacache"] == {"computed_steps": 10, "reused_steps": 0, "reused_step_indices": []}
    assert torch.equal(out.latents, uncached.latents) and torch.equal(out.video, uncached.video)


def test_teacache_forced_schedule_applies_both_residuals(pipe, uncached):
    """A constant polynomial adds 0.04 per step: with threshold 0.1 the stack runs every third step
    (0.12 >= 0.1) and on the first and last; a skipped step adds the stored residual of each stream."""
    pipe.set_cache(TeaCacheConfig(threshold=0.1, coefficients=(0.04,)))
    model, cache = pipe.transformer, pipe.transformer.active_cache("teacache")
    stored, applied = [], []
    run_blocks, apply_cached = model.run_blocks, cache.apply_cached

    def spy_blocks(x, text, **kw):
        out = run_blocks(x, text, **kw)
        stored.append((x - out[0], text - out[1]))  # minus the residuals the cache must keep
        return out

    def spy_apply(x, text, **kw):
        out = apply_cached(x, text, **kw)
        applied.append((x, text, out))
        return out

    model.run_blocks, cache.apply_cached = spy_blocks, spy_apply
    try:
        out = pipe.generate(PROMPT, **RUN)
    finally:
        del model.run_blocks, cache.apply_cached
    n = RUN["num_inference_steps"]
    predicted = [i for i in range(1, n - 1) if i % 3 != 0]
    assert out.stats["teacache"]["reused_step_indices"] == predicted
    assert out.stats["teacache"]["computed_steps"] == n - len(predicted) == len(stored)
    assert len(applied) == len(predicted)
    # step i reuses the residuals of the last computed step: video (B, N, C) and text (B, S, C) alike
    last_computed = {i: max(j for j in range(i) if j not in predicted) for i in predicted}
    computed_order = [i for i in range(n) if i not in predicted]
    for i, (x, text, (x_out, text_out)) in zip(predicted, applied):
        neg_video, neg_text = stored[computed_order.index(last_computed[i])]
        assert x.shape == (2, 45, 32) and text.shape == (2, 226, 32)
        assert neg_text.abs().max() > 0 and neg_video.abs().max() > 0
        assert torch.equal(x_out, x - neg_video) and torch.equal(text_out, text - neg_text)
    assert not torch.equal(out.latents, uncached.latents)


def test_teacache_reuse_adds_both_residuals_to_new_inputs():
    """A skipped step adds the stored residuals to *its own* streams: the skipped call gets other latents,
    text and timestep than the computing one, so "x + residual" and "return the cached output" differ. The
    reference is the same forward with the block stack replaced by "+ the recorded residuals"."""
    model = CogVideoXPipeline.from_config(tiny(preset="tiny-5b")).transformer
    model.enable_cache(TeaCacheConfig(threshold=1e9, coefficients=(0.0,)))
    g = torch.Generator().manual_seed(0)
    x, x2 = torch.randn(2, 3, 4, 6, 10, generator=g), torch.randn(2, 3, 4, 6, 10, generator=g)
    text, text2 = torch.randn(2, 11, 32, generator=g), torch.randn(2, 11, 32, generator=g)
    t, t2 = torch.tensor([900] * 2), torch.tensor([500] * 2)
    residuals = []
    run_blocks = model.run_blocks

    def recording_blocks(h, txt, **kw):
        out = run_blocks(h, txt, **kw)
        residuals.append((out[0] - h, out[1] - txt))
        return out

    model.run_blocks = recording_blocks
    model.cache_begin([900.0, 500.0, 100.0])
    with torch.no_grad():
        model.cache_step(0, 900.0)
        first = model(x, text, t)
        model.cache_step(1, 500.0)
        second = model(x2, text2, t2)  # skipped
        assert model.active_cache("teacache").stats()["reused_step_indices"] == [1] and len(residuals) == 1
        model.disable_cache()
        (video_residual, text_residual), = residuals
        model.run_blocks = lambda h, txt, **kw: (h + video_residual, txt + text_residual)
        expected = model(x2, text2, t2)
        del model.run_blocks
        direct = model(x2, text2, t2)
    assert video_residual.abs().max() > 0 and text_residual.abs().max() > 0
    assert torch.allclose(second, expected, atol=1e-5)
    assert not torch.allclose(second, first, atol=1e-2) and not torch.allclose(second, direct, atol=1e-2)


# ---- PAB ----------------------------------------------------------------------------------------

def test_pab_range_one_is_exact(pipe, uncached):
    pipe.set_cache(PABConfig.for_model(published("cogvideox")["pab"], spatial=((-1, 2000), 1)))
    out = pipe.generate(PROMPT, **RUN)
    layers = pipe.transformer.config.num_layers
    assert out.stats["pab"] == {"spatial_computed": 10 * layers}
    assert torch.equal(out.latents, uncached.latents)


def test_pab_stats_match_the_plan(pipe, uncached):
    pipe.set_cache("pab")
    out = pipe.generate(PROMPT, **RUN)
    plan = pipe.transformer.active_cache("pab").broadcast_plan["spatial"]
    # published for CogVideoX: spatial (joint) attention only, strict window (100, 850), range 2
    timesteps = pipe.transformer.active_cache("pab").timesteps
    assert plan == [i % 2 == 1 and 100 < t < 850 for i, t in enumerate(timesteps)] and any(plan)
    layers = pipe.transformer.config.num_layers
    reused = sum(plan) * layers
    assert out.stats["pab"] == {"spatial_computed": 10 * layers - reused, "spatial_reused": reused}
    assert not torch.equal(out.latents, uncached.latents)


