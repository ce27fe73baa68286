"""Open-Sora-Plan v1.2: release key names, the RoPE / mask maths against the release's formulation,
the CausalVAE's causal shapes, the sampler settings, caches and the pipeline end to end."""

import math

import pytest
import torch

from videosys import OpenSoraPlanConfig, OpenSoraPlanPipeline, VideoSysEngine, read_video
from videosys.cache import PAB, PABConfig, TeaCacheConfig
from videosys.models.modules.pretrained import CheckpointMismatchError
from videosys.models.modules.rope import apply_rope_halves, rope_3d_halves
from videosys.models.open_sora_plan.transformer import MASK_BIAS, OpenSoraT2V, OpenSoraT2VConfig
from videosys.models.open_sora_plan.vae import CausalVAE, CausalVAEConfig

from conftest import published
from layout import assert_same_layout, reference_keys  # tests/layout.py

PROMPT = "a red circle moving to the right"
SMALL = dict(num_attention_heads=2, attention_head_dim=12, num_layers=2, cross_attention_dim=24, caption_channels=16,
             interpolation_scale_t=1.0, interpolation_scale_h=1.5, interpolation_scale_w=2.0)
SMALL_VAE = dict(hidden_size=8, hidden_size_mult=[1, 2, 2, 2], num_res_blocks=1, norm_num_groups=4)
RUN = dict(seed=3, num_inference_steps=6)


def small_model(seed: int = 0, **kw) -> OpenSoraT2V:
    torch.manual_seed(seed)
    return OpenSoraT2V(OpenSoraT2VConfig(**{**SMALL, **kw})).eval()


def small_vae(seed: int = 0) -> CausalVAE:
    torch.manual_seed(seed)
    return CausalVAE(CausalVAEConfig(**SMALL_VAE)).eval()


@pytest.fixture(scope="module")
def tiny():
    return OpenSoraPlanPipeline.from_config(OpenSoraPlanConfig(preset="tiny", progress_bar=False))


def run_tiny(pipeline, cache=None, **kw):
    pipeline.set_cache(cache)
    try:
        return pipeline.generate(PROMPT, **{**RUN, **kw})
    finally:
        pipeline.set_cache(None)


# ---- the release's layouts -------------------------------------------------------------------------
def test_transformer_names_and_shapes_match_release():
    with torch.device("meta"):
        model = OpenSoraT2V(OpenSoraT2VConfig())  # the 29x720p config.json values (models.md)
    expected = reference_keys("osp_t2v_rope_l122_full_state_dict.txt")
    assert len(expected) == 687
    ours = assert_same_layout(model, expected)
    assert sum(math.prod(s) for s in ours.values()) == 2_771_907_856  # the published 2.772B


def test_vae_names_and_shapes_match_release():
    with torch.device("meta"):
        vae = CausalVAE(CausalVAEConfig())
    expected = reference_keys("osp_vae_full_state_dict.txt")
    assert len(expected) == 248
    assert_same_layout(vae, expected)


def test_config_rejects_what_is_not_implemented():
    with pytest.raises(ValueError, match="use_rope"):
        OpenSoraT2VConfig(use_rope=False)
    with pytest.raises(ValueError, match="divisible by 6"):
        OpenSoraT2VConfig(attention_head_dim=64)
    with pytest.raises(ValueError, match="not implemented"):
        CausalVAEConfig(encoder_conv_in="Conv3d")
    assert OpenSoraT2VConfig(interpolation_scale_h=None, sample_size=[60, 80]).interpolation_scales[1:] == (2.0, 2.0)


# ---- maths against the release's formulation -------------------------------------------------------
def release_rope3d(tokens, t, h, w, scales, base=10000.0):
    """RoPE3D of opensora/models/diffusion/opensora/rope.py (v1.2.0), restated: cos / sin tables per axis
    (fp32 angles rounded to the tokens' dtype, cos / sin taken there) looked up by position, head dim
    chunked in three, rotate_half inside each chunk, all in the tokens' dtype."""
    d = tokens.shape[-1] // 3
    pos = torch.cartesian_prod(torch.arange(t), torch.arange(h), torch.arange(w))  # (N, 3) as (t, y, x)

    def table(n, scale):
        inv_freq = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
        freqs = torch.einsum("i,j->ij", torch.arange(n, dtype=inv_freq.dtype) / scale, inv_freq).to(tokens.dtype)
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()

    def rotate_half(x):
        return torch.cat((-x[..., d // 2:], x[..., : d // 2]), dim=-1)

    out = []
    for part, axis, n, scale in zip(tokens.chunk(3, dim=-1), range(3), (t, h, w), scales):
        cos, sin = table(n, scale)
        cos, sin = cos[pos[:, axis]], sin[pos[:, axis]]
        out.append(part * cos + rotate_half(part) * sin)
    return torch.cat(out, dim=-1)


def test_rope_matches_release_rope3d():
    t, h, w, scales = 3, 4, 5, (1.0, 1.5, 2.0)
    x = torch.randn(2, 3, t * h * w, 48)  # (B, heads, N, head_dim)
    cos, sin = rope_3d_halves(16, *(torch.arange(n, dtype=torch.float32) / s for n, s in zip((t, h, w), scales)))
    torch.testing.assert_close(apply_rope_halves(x, cos, sin, parts=3), release_rope3d(x, t, h, w, scales),
                               atol=1e-5, rtol=1e-5)
    model = small_model()
    cos_m, sin_m = model.rotary(t, h, w, torch.device("cpu"))  # the model's scales come from its config
    torch.testing.assert_close(apply_rope_halves(x[..., :12], cos_m, sin_m, parts=3),
                               release_rope3d(x[..., :12], t, h, w, scales), atol=1e-5, rtol=1e-5)


def test_rope_in_bf16_matches_release_rope3d(monkeypatch):
    """A bf16 model's forward: the release rounds its fp32 angles to bf16 before cos / sin and rotates in
    bf16, so the rotated queries and keys equal the restated RoPE3D on the same bf16 inputs exactly."""
    import videosys.models.open_sora_plan.transformer as osp

    t, h, w, scales = 3, 6, 8, (1.0, 1.5, 2.0)
    model = small_model().to(torch.bfloat16)
    seen = []
    rotate = osp.apply_rope_halves

    def recording_rotate(x, *args, **kwargs):  # the queries / keys the model rotates, and the result
        seen.append((x, rotate(x, *args, **kwargs)))
        return seen[-1][1]

    monkeypatch.setattr(osp, "apply_rope_halves", recording_rotate)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model(torch.randn(1, 4, t, 2 * h, 2 * w, generator=g).to(torch.bfloat16), torch.tensor([500.0]),
              torch.randn(1, 5, 16, generator=g).to(torch.bfloat16))
    assert len(seen) == 2 * 2  # q and k of 2 blocks
    for x, got in seen:
        assert x.dtype == got.dtype == torch.bfloat16
        assert torch.equal(got, release_rope3d(x, t, h, w, scales))
    # the exact (fp32) angles give other values: the rounding is the release's, not noise
    cos32, sin32 = rope_3d_halves(4, *(torch.arange(n, dtype=torch.float32) / s for n, s in zip((t, h, w), scales)))
    x, got = seen[0]
    assert not torch.equal(apply_rope_halves(x, cos32, sin32, parts=3), got)


class ReleaseRopeProcessor:
    """Self-attention as the release's AttnProcessor2_0 with use_rope: RoPE3D on q and k, then SDPA."""

    def __init__(self, grid, scales):
        self.grid, self.scales = grid, scales

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b, n, _ = hidden_states.shape
        q, k, v = (f(hidden_states).view(b, n, attn.heads, -1).transpose(1, 2)
                   for f in (attn.to_q, attn.to_k, attn.to_v))
        q, k = release_rope3d(q, *self.grid, self.scales), release_rope3d(k, *self.grid, self.scales)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def test_model_matches_diffusers_modules_with_release_rope():
    """The whole forward against a reference assembled from diffusers' modules (BasicTransformerBlock
    with norm_type ada_norm_single, AdaLayerNormSingle, PixArtAlphaTextProjection: the classes the release
    builds on), the release's RoPE3D and its -10000 text bias, loaded with our state dict."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.embeddings import PixArtAlphaTextProjection
    from diffusers.models.normalization import AdaLayerNormSingle

    model = small_model(seed=5)
    cfg = model.config
    dim = 24
    blocks = torch.nn.ModuleList(BasicTransformerBlock(
        dim, 2, 12, cross_attention_dim=24, activation_fn="gelu-approximate", attention_bias=True,
        norm_elementwise_affine=False, norm_type="ada_norm_single", norm_eps=1e-6) for _ in range(2))
    reference = torch.nn.ModuleDict(dict(
        transformer_blocks=blocks, adaln_single=AdaLayerNormSingle(dim),
        caption_projection=PixArtAlphaTextProjection(16, dim)))
    state = model.state_dict()
    reference.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in reference}, strict=True)

    b, frames, height, width = 2, 3, 8, 6
    x, t = torch.randn(b, 4, frames, height, width), torch.tensor([700.0, 30.0])
    context, mask = torch.randn(b, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    grid = (frames, height // 2, width // 2)
    for block in blocks:
        block.attn1.set_processor(ReleaseRopeProcessor(grid, cfg.interpolation_scales))
    with torch.no_grad():
        tokens = model.pos_embed.proj(x.transpose(1, 2).reshape(b * frames, 4, height, width))
        h = tokens.flatten(2).transpose(1, 2).reshape(b, -1, dim)  # (b t) n c -> b (t n) c
        t_mod, t_emb = reference.adaln_single(t, {"resolution": None, "aspect_ratio": None}, batch_size=b,
                                              hidden_dtype=h.dtype)
        text = reference.caption_projection(context)
        bias = (1 - mask[:, None].float()) * -10000.0  # the release's encoder mask, (B, 1, S)
        for block in blocks:
            h = block(h, encoder_hidden_states=text, encoder_attention_mask=bias, timestep=t_mod)
        shift, scale = (state["scale_shift_table"][None] + t_emb[:, None]).chunk(2, dim=1)
        h = model.proj_out(torch.nn.functional.layer_norm(h, (dim,), eps=1e-6) * (1 + scale) + shift)
        h = h.reshape(b, frames, *grid[1:], 1, 2, 2, 4)
        ref = torch.einsum("nthwopqc->nctohpwq", h).reshape(b, 4, frames, height, width)
        torch.testing.assert_close(model(x, t, context, mask), ref, atol=2e-5, rtol=2e-5)


def test_text_mask_equals_release_additive_bias():
    """Our boolean SDPA mask gives the release's (1 - mask) * -10000 bias result."""
    model = small_model()
    attn = model.transformer_blocks[0].attn2
    x, context = torch.randn(2, 7, 24), torch.randn(2, 5, 24)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    ours = attn(x, context, model.text_mask(mask[:, None]))  # the release's (B, 1, S) layout

    def heads(t):
        return t.view(2, -1, 2, 12).transpose(1, 2)

    q, k, v = heads(attn.to_q(x)), heads(attn.to_k(context)), heads(attn.to_v(context))
    bias = (1 - mask.float())[:, None, None, :] * MASK_BIAS
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(12) + bias, dim=-1)
    ref = attn.to_out[0]((weights @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_forward_shapes_and_text_conditioning():
    model = small_model()
    x, t = torch.randn(2, 4, 3, 8, 6), torch.tensor([900.0, 10.0])
    context, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model(x, t, context, mask)
        assert out.shape == (2, 4, 3, 8, 6)
        # masked text tokens change nothing; kept ones do; the release's (B, 1, S, C) layout is accepted
        changed = context.clone()
        changed[0, 3:] += 5.0
        torch.testing.assert_close(model(x, t, changed, mask)[0], out[0])
        torch.testing.assert_close(model(x, t, context[:, None], mask[:, None]), out)
        changed[0, 0] += 5.0
        assert not torch.allclose(model(x, t, changed, mask)[0], out[0])
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(torch.randn(1, 4, 1, 7, 6), t[:1], context[:1])


def test_save_load_round_trip(tmp_path):
    model = small_model(seed=1)
    model.save_pretrained(str(tmp_path / "t"))
    loaded = OpenSoraT2V.from_pretrained(str(tmp_path), "t")
    x, t, context = torch.randn(1, 4, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, context), model(x, t, context), atol=0, rtol=0)
    vae = small_vae(seed=1)
    vae.save_pretrained(str(tmp_path / "vae"))
    loaded_vae = CausalVAE.from_pretrained(str(tmp_path / "vae"))
    z = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded_vae.decode(z), vae.decode(z), atol=0, rtol=0)
    small_model(num_layers=1).save_pretrained(str(tmp_path / "bad"))  # config says 1 layer ...
    import json

    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**cfg, "num_layers": 2}))  # ... config.json says 2
    with pytest.raises(CheckpointMismatchError, match="missing keys .*transformer_blocks.1"):
        OpenSoraT2V.from_pretrained(str(tmp_path / "bad"))


def test_vae_reads_release_training_checkpoint(tmp_path):
    """The release ships vae/ as config.json + a .ckpt (EMA weights preferred, loss.* dropped)."""
    vae = small_vae(seed=2)
    vae.save_pretrained(str(tmp_path))
    (tmp_path / vae.weights_name).unlink()
    noise = {k: torch.zeros_like(v) for k, v in vae.state_dict().items()}
    torch.save({"ema_state_dict": {"module." + k: v for k, v in vae.state_dict().items()},
                "state_dict": {**noise, "loss.logvar": torch.zeros(())}}, tmp_path / "checkpoint.ckpt")
    loaded = CausalVAE.from_pretrained(str(tmp_path))
    for k, v in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ---- CausalVAE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("frames,latent_frames", [(1, 1), (9, 3), (17, 5)])
def test_vae_shapes(frames, latent_frames):
    vae = small_vae()
    video = torch.rand(1, 3, frames, 32, 48) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video, sample=False)
        assert z.shape == (1, 4, latent_frames, 4, 6)
        assert vae.latent_size(frames, 32, 48) == (latent_frames, 4, 6)
        assert vae.decode(z).shape == (1, 3, frames, 32, 48)


def test_vae_convs_are_causal_and_sampling_is_seeded():
    from videosys.models.open_sora_plan.vae import CausalConv3d, Spatial2xTime2x3DDownsample

    torch.manual_seed(0)
    conv, down = CausalConv3d(3, 4, 3, padding=1), Spatial2xTime2x3DDownsample(3, 3)
    x = torch.randn(1, 3, 9, 8, 8)
    later = x.clone()
    later[:, :, 5:] += 1.0  # change frames 5..8
    with torch.no_grad():
        torch.testing.assert_close(conv(x)[:, :, :5], conv(later)[:, :, :5])  # the past never sees the future
        assert not torch.allclose(conv(x)[:, :, 5], conv(later)[:, :, 5])
        # 9 -> 5 frames; output frame 0 is frame 0 alone (padded with copies of itself), 1 is frames 0..2, 2 is 2..4
        torch.testing.assert_close(down(x)[:, :, :3], down(later)[:, :, :3])
        assert down(x).shape == (1, 3, 5, 4, 4)
    vae = small_vae()
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video, sample=False)
        a = vae.encode(video, generator=torch.Generator().manual_seed(0))
        b = vae.encode(video, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a, b) and not torch.equal(a, z)
        mean, _ = vae.moments(video)
        torch.testing.assert_close(z, mean * 0.18215)  # the release's scale
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.latent_size(8, 16, 16)


def release_time_chunks(t: int, tile_t: int) -> list[list[int]]:
    """CausalVAEModel.tiled_decode's time chunks (v1.2.0), restated."""
    idx = list(range(0, t, tile_t - 1))
    if len(idx) == 1:
        return [[0, t]]
    chunks = [[idx[i], idx[i + 1] + 1] for i in range(len(idx) - 1)]
    if chunks[-1][-1] > t:
        chunks[-1][-1] = t
    elif chunks[-1][-1] < t:
        chunks.append([idx[-1], t])
    return chunks


def test_tiled_decode():
    vae = small_vae()
    z = torch.randn(1, 4, 5, 6, 7)
    with torch.no_grad():
        whole = vae.decode(z)
        vae.enable_tiling(sample_size=64, latent_size=8, latent_frames=8)  # one tile holds everything
        torch.testing.assert_close(vae.decode(z), whole)
        vae.enable_tiling(sample_size=32, latent_size=4, latent_frames=3, overlap_factor=0.25)
        tiled = vae.decode(z)
    assert tiled.shape == whole.shape == (1, 3, 17, 48, 56)
    assert torch.isfinite(tiled).all()
    for t in range(1, 40):
        for tile_t in (3, 8):
            vae.tiling["latent_frames"] = tile_t
            seen = []
            vae.tiled_decode_2d = lambda c: seen.append(c.shape[2]) or torch.zeros(1, 3, 4 * c.shape[2] - 3, 1, 1)
            vae.tiled_decode(torch.zeros(1, 4, t, 1, 1))
            assert seen == [b - a for a, b in release_time_chunks(t, tile_t)], (t, tile_t)


# ---- sampler settings ----------------------------------------------------------------------------------
def test_scheduler_is_release_euler_ancestral(tiny):
    from diffusers import EulerAncestralDiscreteScheduler

    s = tiny.scheduler
    assert type(s) is EulerAncestralDiscreteScheduler
    c = s.config
    assert (c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule, c.prediction_type) == (
        1000, 0.0001, 0.02, "linear", "epsilon")
    ref = EulerAncestralDiscreteScheduler()
    ref.set_timesteps(100)
    s.set_timesteps(100)
    torch.testing.assert_close(s.timesteps, ref.timesteps)
    config = OpenSoraPlanConfig()
    assert (config.num_inference_steps, config.guidance_scale, config.fps) == (100, 7.5, 24)
    assert config.max_text_length == 512
    assert (config.num_frames, config.height, config.width) == (29, 480, 640)
    assert config.model_path == "LanguageBind/Open-Sora-Plan-v1.2.0"
    assert (OpenSoraPlanConfig(transformer_type="93x720p").num_frames, OpenSoraPlanConfig(
        transformer_type="93x720p").width) == (93, 1280)
    assert config.cache_models() == ("open-sora-plan-v120", "open-sora-plan")


# ---- pipeline ------------------------------------------------------------------------------------------
def test_end_to_end_mp4(tmp_path):
    with VideoSysEngine(OpenSoraPlanConfig(preset="tiny", progress_bar=False)) as engine:
        out = engine.generate(PROMPT, **RUN)
        path = engine.save_video(out.video[0], str(tmp_path / "osp.mp4"))
    assert out.video.shape == (1, 9, 64, 64, 3) and out.video.dtype == torch.uint8
    assert out.latents.shape == (1, 4, 3, 8, 8) and torch.isfinite(out.latents).all()
    assert out.stats["steps"] == RUN["num_inference_steps"]
    frames, fps = read_video(path)
    assert frames.shape == (9, 64, 64, 3) and fps == 24


def test_seeds_prompts_and_batches(tiny):
    a, b = run_tiny(tiny), run_tiny(tiny)
    assert torch.equal(a.latents, b.latents)  # seeded CPU noise, ancestral noise included
    assert not torch.equal(run_tiny(tiny, seed=4).latents, a.latents)
    short = dict(RUN, num_inference_steps=3)
    batch = tiny.generate([PROMPT, "a blue square"], **short)
    assert batch.video.shape[0] == 2 and not torch.equal(batch.latents[1], batch.latents[0])
    no_cfg = run_tiny(tiny, guidance_scale=1.0, num_inference_steps=3)
    assert no_cfg.video.shape == a.video.shape and not torch.equal(no_cfg.latents, batch.latents[:1])
    assert run_tiny(tiny, num_frames=1, num_inference_steps=3).video.shape == (1, 1, 64, 64, 3)


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tiny.generate(PROMPT, num_frames=10, num_inference_steps=1)
    with pytest.raises(ValueError, match="divisible by 16"):
        tiny.generate(PROMPT, height=72, num_inference_steps=1)
    with pytest.raises(ValueError, match="prompt"):
        tiny.generate("  ", num_inference_steps=1)
    with pytest.raises(ValueError, match="negative_prompt"):
        tiny.generate(PROMPT, negative_prompt=["x"], num_inference_steps=1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny.generate(PROMPT, num_inference_steps=0)
    with pytest.raises(ValueError, match="transformer_type"):
        OpenSoraPlanConfig(transformer_type="65x512x512")
    with pytest.raises(ValueError, match="unknown version"):
        OpenSoraPlanConfig(version="v100")
    with pytest.raises(ValueError, match="\\{\\}"):
        OpenSoraPlanConfig(preset="tiny", positive_prompt="no slot")


# ---- caches --------------------------------------------------------------------------------------------
def test_teacache_threshold_zero_and_pab_range_one_are_exact(tiny):
    base = run_tiny(tiny)
    coefficients = published("open-sora-plan")["teacache"]["coefficients"]
    tea0 = run_tiny(tiny, TeaCacheConfig(threshold=0.0, coefficients=coefficients))
    assert torch.equal(tea0.latents, base.latents)
    assert tea0.stats["teacache"]["reused_steps"] == 0
    pab1 = run_tiny(tiny, PABConfig(spatial=((0, 1000), 1), temporal=None, cross=((0, 1000), 1)))
    assert torch.equal(pab1.latents, base.latents)
    assert pab1.stats["pab"].get("spatial_reused", 0) == 0 and pab1.stats["pab"]["spatial_computed"] > 0


def test_pab_compares_timesteps_truncated_as_videosys(tiny, monkeypatch):
    """VideoSys's v1.2 PAB decides on int(t) of the Euler timesteps: at the release's 100 steps step 89
    (t = 100.909) is outside the (100, 850) window, so it computes; compared as a float it would broadcast."""
    handed = []

    class Planned(Exception):
        pass

    def cache_begin(values, *args, **kwargs):  # what the pipeline hands the caches; no need to run the 100 steps
        handed.append(values)
        raise Planned

    monkeypatch.setattr(tiny.transformer, "cache_begin", cache_begin)
    with pytest.raises(Planned):
        tiny.generate(PROMPT, num_inference_steps=100, num_frames=1, height=16, width=16)
    from diffusers import EulerAncestralDiscreteScheduler

    reference = EulerAncestralDiscreteScheduler()
    reference.set_timesteps(100)
    timesteps = reference.timesteps.tolist()
    assert timesteps[89] == pytest.approx(100.909, abs=1e-3)
    assert handed == [[float(int(t)) for t in timesteps]]
    pab = PAB(PABConfig.for_model(published("open-sora-plan-v120")["pab"]))
    pab.begin(handed[0])
    # VideoSys's rule (pab_mgr.if_broadcast_spatial): count % range != 0 and lo < int(t) < hi
    expected = [i % 2 != 0 and 100 < int(t) < 850 for i, t in enumerate(timesteps)]
    assert pab.broadcast_plan["spatial"] == expected and not expected[89]


def test_published_cache_settings_reuse(tiny):
    base = run_tiny(tiny, num_inference_steps=20)
    pab = run_tiny(tiny, "pab", num_inference_steps=20)  # open-sora-plan-v120: spatial range 2, cross 6
    stats = pab.stats["pab"]
    assert stats["spatial_reused"] > 0 and stats["cross_reused"] > 0 and "temporal_reused" not in stats
    assert not torch.equal(pab.latents, base.latents)
    fast = run_tiny(tiny, TeaCacheConfig(threshold=5.0, coefficients=(1.0, 0.0)), num_inference_steps=20)
    assert fast.stats["teacache"]["reused_steps"] > 0
    assert torch.isfinite(fast.latents).all()


def test_pipeline_folder_round_trip(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path))
    loaded = OpenSoraPlanPipeline.from_config(OpenSoraPlanConfig(model_path=str(tmp_path), progress_bar=False,
                                                                 num_frames=9, height=64, width=64))
    short = dict(RUN, num_inference_steps=2)
    assert torch.equal(loaded.generate(PROMPT, **short).latents, tiny.generate(PROMPT, **short).latents)
