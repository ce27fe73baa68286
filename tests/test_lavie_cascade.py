"""LaVie's cascade, tiny: base -> interpolation -> vsr end to end, each stage as its own entry point would run it, the
caches on every stage's UNet with their counts in out.stats, and CFG parallel (slow: two processes)."""

import pytest
import torch

from videosys.models.lavie.interpolation import TINY_SETTINGS as INTERPOLATION
from videosys.models.lavie.pipeline import LaVieConfig, LaViePipeline
from videosys.models.lavie.vsr import TINY_SETTINGS as VSR

PROMPT = "a dog running"
RUN = dict(seed=4, num_inference_steps=3, num_frames=2, height=16, width=16)
STAGES = ("base", "interpolation", "vsr")


def tiny(**kw):
    return LaVieConfig(preset="tiny", progress_bar=False, stages=STAGES, **kw)


@pytest.fixture(scope="module")
def cascade():
    return LaViePipeline.from_config(tiny())


def test_tiny_cascade_runs_base_interpolation_vsr(cascade):
    out = cascade.generate(PROMPT, **RUN)
    assert out.video.shape == (1, 5, 64, 64, 3) and out.video.dtype == torch.uint8  # 4 * 2 - 3 frames, x4 sides
    assert out.latents.shape == (1, 4, 5, 16, 16) and torch.isfinite(out.latents).all()
    assert (out.stats["steps"], out.stats["interpolation_steps"], out.stats["vsr_steps"]) == (3, 6, 6)
    assert cascade.config.fps == 24 and LaVieConfig(preset="tiny").fps == 8  # the interpolated video's rate
    # each stage is the stage's own entry point on the previous one's video, with the base run's prompt and seed
    interpolation, vsr = cascade.later_stages
    cascade.later_stages = []  # the base stage alone
    try:
        base = cascade.generate(PROMPT, **RUN)
    finally:
        cascade.later_stages = [interpolation, vsr]
    with torch.no_grad():
        middle = interpolation.interpolate(base.video, [PROMPT], RUN["seed"], INTERPOLATION)
        final = vsr.upscale_latents(middle, [PROMPT], RUN["seed"], VSR)
    assert torch.equal(out.latents, final.float())


@pytest.mark.parametrize("spec,name", [("forecast-i2-w2", "forecast"), ("deepcache-2", "deepcache"),
                                       ("taylorseer", "taylorseer")], ids=["step-output", "stack", "module"])
def test_caches_act_on_every_stage(cascade, spec, name):
    """One method per hook point: the step-output forecast, DeepCache at the UNets' block stacks, TaylorSeer at the
    module sites; each stage's UNet counts its own steps."""
    cascade.set_cache(spec)
    try:
        out = cascade.generate(PROMPT, **{**RUN, "num_inference_steps": 8})
    finally:
        cascade.set_cache("none")
    assert torch.isfinite(out.latents).all()
    for prefix, steps in (("", 8), ("interpolation_", 6), ("vsr_", 6)):
        counts = out.stats[prefix + name]
        if name == "taylorseer":  # module calls: 4 sites per transformer block
            assert counts["forecast_modules"] > 0 and counts["computed_modules"] > 0, (prefix, counts)
        else:
            assert counts["reused_steps"] > 0 and counts["computed_steps"] + counts["reused_steps"] == steps, counts


def test_methods_fitted_for_the_base_unet_are_refused_on_later_stages(cascade):
    """TeaCache's polynomial (the tiny base UNet's) is not the interpolation / VSR UNets': refused when the config is
    built and by set_cache, before anything changes; the base stage alone takes it."""
    with pytest.raises(ValueError, match="teacache runs on numbers fitted for one model, and LaVie's interpolation"):
        tiny(cache="teacache-slow")
    cascade.set_cache("deepcache")
    with pytest.raises(ValueError, match="fitted for one model"):
        cascade.set_cache("teacache-slow")
    assert list(cascade.transformer.caches) == ["deepcache"]  # nothing changed
    cascade.set_cache("none")
    assert LaVieConfig(preset="tiny", cache="teacache-slow").cache_configs()  # the base stage's own polynomial


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cascade_cfg_parallel_equals_one_process(cascade):
    from videosys import VideoSysEngine

    single = cascade.generate(PROMPT, **RUN)
    with VideoSysEngine(tiny(num_gpus=2, cfg_parallel=True)) as engine:
        out = engine.generate(PROMPT, **RUN)
    # the stages hand each other uint8 videos (the release: mp4 files), so a batch-of-1 vs batch-of-2 rounding
    # difference may move a pixel by one level between stages: a little more than fp32 rounding at the end
    assert out.video.shape == single.video.shape
    assert (out.video.int() - single.video.int()).abs().max() <= 2
    assert (out.latents - single.latents).abs().max() <= 1e-3 * max(1.0, float(single.latents.abs().max()))


def test_the_release_layout_saves_and_loads_back(cascade, tmp_path):
    """save_pretrained writes the three .pt files and both SD folders as the release's pretrained_models/ holds them;
    LaVieConfig(model_path=...) runs the cascade from them, strictly, to the same video."""
    cascade.save_pretrained(str(tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["lavie_base.pt", "lavie_interpolation.pt", "lavie_vsr.pt", "stable-diffusion-v1-4",
                     "stable-diffusion-x4-upscaler"]
    vsr_state = torch.load(tmp_path / "lavie_vsr.pt", weights_only=True)
    assert "temporal_rotary_emb.freqs" in vsr_state  # rotary_embedding_torch's frequencies, as the release carries
    # preset="tiny" with a model_path: these weights, the tiny preset's sampler settings (steps) for every stage
    loaded = LaViePipeline.from_config(tiny(model_path=str(tmp_path)))
    assert torch.equal(loaded.generate(PROMPT, **RUN).latents, cascade.generate(PROMPT, **RUN).latents)
    del vsr_state["mid_temporal_block.shift_conv.weight"]
    torch.save(vsr_state, tmp_path / "lavie_vsr.pt")
    with pytest.raises(ValueError, match=r"missing keys \(1\): mid_temporal_block.shift_conv.weight"):
        LaViePipeline.from_config(tiny(model_path=str(tmp_path)))
