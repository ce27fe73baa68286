"""Open-Sora-Plan v1.1: release key names (dumped from the official v1.1.0 classes, tests/data/), the LatteT2V
maths against diffusers' LatteTransformer3DModel, the v1.1 CausalVAE's time resampling, the sampler settings,
prompt handling, loading the release layout, caches and the pipeline end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from videosys import OpenSoraPlanConfig, OpenSoraPlanPipeline, VideoSysEngine, read_video
from videosys.cache import PABConfig, TeaCacheConfig
from videosys.models.open_sora_plan.latte_t2v import LatteT2V, LatteT2VConfig
from videosys.models.open_sora_plan.vae import (CAUSALVAE_V110, CausalVAE, CausalVAEConfig, TimeDownsampleRes2x,
                                                TimeUpsampleRes2x)

from conftest import published
from layout import assert_same_layout, reference_keys  # tests/layout.py

PROMPT = "a red circle moving to the right"
RUN = dict(seed=3, num_inference_steps=4)  # PNDM: 4 steps = 13 model calls (its Runge-Kutta warm-up)
SMALL = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, cross_attention_dim=32, caption_channels=24,
             sample_size=[8, 8])


@pytest.fixture(scope="module")
def tiny():
    return OpenSoraPlanPipeline.from_config(OpenSoraPlanConfig(version="v110", preset="tiny", progress_bar=False))


@pytest.fixture(scope="module")
def base(tiny):
    return tiny.generate(PROMPT, **RUN)


def run_tiny(pipeline, cache=None, prompt=PROMPT, **kw):
    pipeline.set_cache(cache)
    try:
        return pipeline.generate(prompt, **{**RUN, **kw})
    finally:
        pipeline.set_cache(None)


# ---- the release's layouts -------------------------------------------------------------------------
def test_transformer_names_and_shapes_match_release():
    with torch.device("meta"):
        model = LatteT2V(LatteT2VConfig())  # 65x512x512: LatteT2V-XL/122, video_length 17
    expected = reference_keys("osp11_latte_t2v_state_dict.txt")
    assert len(expected) == 968
    ours = assert_same_layout(model, expected)
    assert sum(math.prod(s) for s in ours.values()) == 1_057_738_400  # the release's 4.23 GB of fp32


def test_vae_names_and_shapes_match_release():
    with torch.device("meta"):
        vae = CausalVAE(CausalVAEConfig(**CAUSALVAE_V110))
    expected = reference_keys("osp11_causalvae_state_dict.txt")
    assert len(expected) == 260
    assert_same_layout(vae, expected)


def test_transformer_config_per_release():
    assert LatteT2VConfig().temporal_interpolation_scale == 1  # 65 frames -> 17 latent frames
    assert LatteT2VConfig(video_length=56).temporal_interpolation_scale == 3  # 221 frames -> 56
    assert LatteT2VConfig(video_length=56, interpolation_scale_1d=0.5).temporal_interpolation_scale == 1
    assert LatteT2VConfig(sample_size=32).sample_size == [32, 32]
    for bad, match in ((dict(use_rope=True), "use_rope"), (dict(compress_kv_factor=2), "compress_kv"),
                       (dict(norm_elementwise_affine=True), "elementwise")):
        with pytest.raises(ValueError, match=match):
            LatteT2VConfig(**bad)


# ---- LatteT2V against diffusers' Latte (the blocks the release builds on) ------------------------------
def release_temporal_table(dim: int, frames: int, scale: float) -> torch.Tensor:
    """get_1d_sincos_pos_embed of opensora/models/diffusion/utils/pos_embed.py (v1.1.0), restated:
    positions arange(frames) / interpolation_scale_1d, [sin | cos] with omega = 1 / 10000^(2i / dim)."""
    pos = (torch.arange(frames) / scale).double()
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos[:, None] * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1).float()[None]  # (1, frames, dim)


@pytest.mark.parametrize("frames,height", [(5, 8), (34, 6)])
def test_matches_diffusers_latte_with_release_positions(frames, height):
    """The whole forward against diffusers' LatteTransformer3DModel (the same blocks) holding our weights, its
    temporal table replaced by the release's (interpolation_scale_1d = 2 for video_length 34)."""
    from diffusers import LatteTransformer3DModel as DiffusersLatte

    torch.manual_seed(0)
    ours = LatteT2V(LatteT2VConfig(**SMALL, video_length=frames)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ref = DiffusersLatte(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
                         cross_attention_dim=32, attention_bias=True, sample_size=8, patch_size=2,
                         activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                         norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=24,
                         video_length=frames).eval()
    state = {k: v for k, v in ours.state_dict().items() if k != "caption_projection.y_embedding"}
    ref.load_state_dict(state, strict=True)
    scale = ours.config.temporal_interpolation_scale
    assert scale == (2 if frames == 34 else 1)
    ref.temp_pos_embed = release_temporal_table(32, frames, scale)
    x, text = torch.randn(2, 4, frames, height, 8, generator=g), torch.randn(2, 7, 24, generator=g)
    t = torch.tensor([900, 30])
    with torch.no_grad():
        expected = ref(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        got = ours(x, t, text)
    assert got.shape == (2, 8, frames, height, 8) and expected.abs().max() > 0.1
    assert (got - expected).abs().max() <= 1e-4


# ---- CausalVAE v1.1 ----------------------------------------------------------------------------------------
def small_vae(seed: int = 0) -> CausalVAE:
    torch.manual_seed(seed)
    return CausalVAE(CausalVAEConfig(**CAUSALVAE_V110, hidden_size=8, hidden_size_mult=[1, 2, 2, 2],
                                     num_res_blocks=1, norm_num_groups=4)).eval()


@pytest.mark.parametrize("frames,latent_frames", [(1, 1), (5, 2), (17, 5)])
def test_vae_shapes_causal_first_frame(frames, latent_frames):
    vae = small_vae()
    assert (vae.config.temporal_ratio, vae.config.spatial_ratio) == (4, 8)
    video = torch.rand(1, 3, frames, 32, 48) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video, sample=False)
        assert z.shape == (1, 4, latent_frames, 4, 6)
        assert vae.decode(z).shape == (1, 3, frames, 32, 48)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.latent_size(8, 32, 48)


def test_time_resampling_matches_release_formulas():
    """TimeDownsampleRes2x / TimeUpsampleRes2x (opensora/models/ae/videobase/modules/updownsample.py, v1.1.0)
    restated: a sigmoid(mix_factor) blend of average pooling / trilinear doubling and a conv; causal in time."""
    torch.manual_seed(0)
    down, up = TimeDownsampleRes2x(3, 3), TimeUpsampleRes2x(3, 3)
    with torch.no_grad():
        down.mix_factor.fill_(0.3)
        up.mix_factor.fill_(-0.4)
    x = torch.randn(1, 3, 9, 4, 5)
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)  # two copies of the first frame in front
    a = torch.sigmoid(torch.tensor(0.3))
    expected = a * F.avg_pool3d(padded, (3, 1, 1), stride=(2, 1, 1)) + (1 - a) * F.conv3d(
        padded, down.conv.weight, down.conv.bias, stride=(2, 1, 1), padding=(0, 1, 1))
    later = x.clone()
    later[:, :, 5:] += 1.0
    with torch.no_grad():
        out = down(x)
        torch.testing.assert_close(out, expected)
        assert out.shape[2] == 5  # (9 - 1) / 2 + 1
        torch.testing.assert_close(down(later)[:, :, :3], out[:, :, :3])  # frames < 5 only see frames < 5
        doubled = torch.cat([x[:, :, :1], F.interpolate(x[:, :, 1:], scale_factor=(2, 1, 1), mode="trilinear")], 2)
        b = torch.sigmoid(torch.tensor(-0.4))
        torch.testing.assert_close(up(x), b * doubled + (1 - b) * up.conv(doubled))
        assert up(x).shape[2] == 17 and up(x[:, :, :1]).shape[2] == 1


def test_vae_loads_release_folder_with_training_loss_weights(tmp_path):
    """A vae/ folder saved from the release's class holds its training loss (loss.*) too: dropped on load."""
    from safetensors.torch import load_file, save_file

    vae = small_vae(seed=2)
    vae.save_pretrained(str(tmp_path))
    weights = tmp_path / vae.weights_name
    save_file({**load_file(str(weights)), "loss.logvar": torch.zeros(())}, str(weights))
    loaded = CausalVAE.from_pretrained(str(tmp_path))
    z = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), vae.decode(z), atol=0, rtol=0)


# ---- config, sampler, prompts -----------------------------------------------------------------------------
def test_config_defaults_per_version():
    config = OpenSoraPlanConfig(version="v110")
    assert (config.num_frames, config.height, config.width) == (65, 512, 512)
    assert (config.num_inference_steps, config.guidance_scale, config.fps) == (150, 7.5, 24)
    assert (config.max_text_length, config.negative_prompt, config.tile_overlap_factor) == (300, "", 0.25)
    assert config.model_path == "LanguageBind/Open-Sora-Plan-v1.1.0"
    assert config.official_text_encoder_path == "DeepFloyd/t5-v1_1-xxl"
    assert OpenSoraPlanConfig(version="v110", transformer_type="221x512x512").num_frames == 221
    assert config.cache_models() == ("open-sora-plan-v110", "open-sora-plan")
    v12 = OpenSoraPlanConfig()  # v1.2 keeps its own
    assert (v12.num_inference_steps, v12.max_text_length, v12.model_path) == (
        100, 512, "LanguageBind/Open-Sora-Plan-v1.2.0")
    tiny = OpenSoraPlanConfig(version="v110", preset="tiny")
    assert (tiny.model_path, tiny.num_frames, tiny.num_inference_steps) == (None, 9, 150)


def test_config_rejects_bad_input():
    with pytest.raises(ValueError, match="for version 'v110'"):
        OpenSoraPlanConfig(version="v110", transformer_type="29x480p")
    with pytest.raises(ValueError, match="for version 'v120'"):
        OpenSoraPlanConfig(transformer_type="65x512x512")
    with pytest.raises(ValueError, match="unknown version"):
        OpenSoraPlanConfig(version="v130")


def test_scheduler_is_release_pndm(tiny):
    from diffusers import PNDMScheduler

    s = tiny.scheduler
    assert type(s) is PNDMScheduler
    c = s.config
    assert (c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule, c.prediction_type) == (
        1000, 0.0001, 0.02, "linear", "epsilon")
    assert (c.skip_prk_steps, c.set_alpha_to_one, c.steps_offset) == (False, False, 0)
    ref = PNDMScheduler()
    ref.set_timesteps(150)
    s.set_timesteps(150)
    torch.testing.assert_close(s.timesteps, ref.timesteps)
    assert len(s.timesteps) == 150 + 3 * 4 - 4 + 1  # Runge-Kutta warm-up (pndm_order 4) adds 9 model calls
    # PAB's published MLP table names timesteps of this schedule
    assert {738, 426} <= {int(t) for t in s.timesteps}


def test_prompt_handling_as_release(tiny, base):
    """lower-cased and stripped; text cut to the prompt's tokens (nothing masked for one prompt)."""
    assert tiny.prepare_prompts(["  A Red CIRCLE "]) == ["a red circle"]
    text, mask = tiny.encode_prompt(["a red circle"], "", do_cfg=True)
    n = len(tiny.tokenizer("a red circle").input_ids)  # with </s>
    assert text.shape[:2] == (2, n) and mask is None
    text, mask = tiny.encode_prompt(["a red circle", "a dog"], "", do_cfg=True)  # the shorter one is masked,
    # in its uncond row too: each row attends to what it would alone (a batched video equals the single run)
    assert text.shape[:2] == (4, n) and torch.equal(mask[:2], mask[2:]) and mask[2].all() and not mask[3].all()
    assert torch.equal(run_tiny(tiny, prompt="  A RED circle moving to the RIGHT").latents, base.latents)



# ---- pipeline ------------------------------------------------------------------------------------------
def test_end_to_end_mp4(tmp_path):
    with VideoSysEngine(OpenSoraPlanConfig(version="v110", preset="tiny", progress_bar=False)) as engine:
        out = engine.generate(PROMPT, **RUN)
        path = engine.save_video(out.video[0], str(tmp_path / "osp11.mp4"))
    assert out.video.shape == (1, 9, 64, 64, 3) and out.video.dtype == torch.uint8
    assert out.latents.shape == (1, 4, 3, 8, 8) and torch.isfinite(out.latents).all()
    assert out.stats["steps"] == 13
    frames, fps = read_video(path)
    assert frames.shape == (9, 64, 64, 3) and fps == 24


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny.generate(PROMPT, num_frames=8, num_inference_steps=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny.generate(PROMPT, height=72, num_inference_steps=4)
    with pytest.raises(ValueError, match="warm-up needs at least 4"):
        tiny.generate(PROMPT, num_inference_steps=3)


def test_folder_round_trip_and_release_layout(tiny, base, tmp_path):
    """save_pretrained -> the same video; and the release layout (65x512x512/ + vae/, the T5 from its own
    folder) loads through model_path + text_encoder_path."""
    from videosys.utils.text import save_text_stack

    size = dict(num_frames=9, height=64, width=64, progress_bar=False)
    tiny.save_pretrained(str(tmp_path / "ours"))
    loaded = OpenSoraPlanPipeline.from_config(OpenSoraPlanConfig(version="v110", model_path=str(tmp_path / "ours"),
                                                                 **size))
    assert type(loaded.transformer) is LatteT2V and type(loaded.scheduler) is type(tiny.scheduler)
    assert torch.equal(loaded.generate(PROMPT, **RUN).latents, base.latents)

    release = tmp_path / "release"
    tiny.transformer.save_pretrained(str(release / "65x512x512"))
    tiny.vae.save_pretrained(str(release / "vae"))
    save_text_stack(tiny.tokenizer, tiny.text_encoder, str(tmp_path / "t5"))
    from_release = OpenSoraPlanPipeline.from_config(OpenSoraPlanConfig(
        version="v110", model_path=str(release), text_encoder_path=str(tmp_path / "t5"), **size))
    assert torch.equal(from_release.generate(PROMPT, **RUN).latents, base.latents)


# ---- caches --------------------------------------------------------------------------------------------
def test_caches(tiny, base):
    coefficients = published("open-sora-plan")["teacache"]["coefficients"]
    tea0 = run_tiny(tiny, TeaCacheConfig(threshold=0.0, coefficients=coefficients))
    assert torch.equal(tea0.latents, base.latents) and tea0.stats["teacache"]["reused_steps"] == 0
    pab1 = run_tiny(tiny, PABConfig(spatial=((0, 1000), 1), temporal=((0, 1000), 1), cross=((0, 1000), 1)))
    assert torch.equal(pab1.latents, base.latents) and pab1.stats["pab"]["temporal_computed"] > 0
    pab = run_tiny(tiny, "pab", num_inference_steps=8)  # open-sora-plan-v110: spatial 2, temporal 4, cross 6
    stats = pab.stats["pab"]
    assert stats["spatial_reused"] > 0 and stats["temporal_reused"] > 0 and stats["cross_reused"] > 0
    assert torch.isfinite(pab.latents).all()
    fast = run_tiny(tiny, "teacache-fast", num_inference_steps=8)
    assert fast.stats["teacache"]["reused_steps"] > 0 and torch.isfinite(fast.latents).all()
