"""Open-Sora 1.2: release key names, STDiT3 maths against hand-written references, the rectified-flow
sampler against hand-computed values, the VAE, and the pipeline end to end."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videosys import OpenSoraConfig, OpenSoraPipeline, VideoSysEngine, read_video
from videosys.models.modules.pretrained import CheckpointMismatchError
from videosys.models.open_sora.pipeline import frame_count, image_size
from videosys.models.modules.adaln import modulate as t2i_modulate
from videosys.models.open_sora.transformer import STDiT3, STDiT3Config, apply_rope
from videosys.models.open_sora.vae import OpenSoraVAE, OpenSoraVAEConfig
from videosys.schedulers.rectified_flow import RectifiedFlowScheduler, timestep_transform

from layout import assert_same_layout, reference_keys  # tests/layout.py

PROMPT = "a red circle moving to the right"
SMALL = dict(hidden_size=32, depth=2, num_heads=2, caption_channels=12, model_max_length=6, input_sq_size=64)


def small_model(seed: int = 0, **kw) -> STDiT3:
    torch.manual_seed(seed)
    return STDiT3(STDiT3Config(**{**SMALL, **kw})).eval()


@pytest.fixture(scope="module")
def tiny():
    return OpenSoraPipeline.from_config(OpenSoraConfig(preset="tiny", progress_bar=False))


# ---- the release's layouts -------------------------------------------------------------------------
def test_stdit3_xl2_names_and_shapes_match_release():
    with torch.device("meta"):
        model = STDiT3(STDiT3Config())  # config.json defaults of hpcai-tech/OpenSora-STDiT-v3
    expected = reference_keys("stdit3_xl2_full_state_dict.txt")
    assert len(expected) == 973
    ours = assert_same_layout(model, expected)
    assert sum(math.prod(s) for s in ours.values()) == 1_208_872_772  # the published 1.208B


def test_vae_names_and_shapes_match_release():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = OpenSoraVAE(OpenSoraVAEConfig())
        sdxl = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    temporal = reference_keys("vae12_temporal_full_state_dict.txt", "temporal_vae.")
    spatial = {"spatial_vae.module." + k: tuple(v.shape) for k, v in sdxl.state_dict().items()}
    expected = {**temporal, **spatial, "scale": (1, 4, 1, 1, 1), "shift": (1, 4, 1, 1, 1)}
    ours = assert_same_layout(vae, expected)
    assert sum(math.prod(ours[k]) for k in spatial) == 83_653_863  # the SD / SDXL VAE
    assert "spatial_vae.module.encoder.mid_block.attentions.0.to_q.weight" in ours


# ---- STDiT3 maths ------------------------------------------------------------------------------------
def test_modulation_matches_hand_written_t2i_modulate():
    block = small_model().spatial_blocks[0]
    b, c = 2, 32
    x, t_mlp = torch.randn(b, 3, 5, c), torch.randn(b, 6 * c)
    table = block.scale_shift_table
    shift = table[0] + t_mlp[:, :c]
    scale = table[1] + t_mlp[:, c:2 * c]
    normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    expected = normed * (1 + scale[:, None, None]) + shift[:, None, None]
    with torch.no_grad():
        got = block.modulated_input(x, block.modulation(t_mlp))
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(t2i_modulate(torch.ones(2), torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])),
                       torch.tensor([5.0, 2.0]))


def test_conditioning_frames_take_the_t0_modulation():
    """With x_mask False on a frame, a spatial block treats that frame as if t were the t=0 embedding."""
    block = small_model().spatial_blocks[0]
    x, y = torch.randn(1, 3, 4, 32), torch.randn(1, 5, 32)
    t_mlp, t0_mlp = torch.randn(1, 192), torch.randn(1, 192)
    x_mask = torch.tensor([[True, False, True]])
    with torch.no_grad():
        mixed = block(x, y, t_mlp, None, None, t0_mlp, x_mask)
        at_t = block(x, y, t_mlp)
        at_t0 = block(x, y, t0_mlp)
    assert torch.allclose(mixed[:, [0, 2]], at_t[:, [0, 2]], atol=1e-6)
    assert torch.allclose(mixed[:, 1], at_t0[:, 1], atol=1e-6)
    assert (at_t[:, 1] - at_t0[:, 1]).abs().max() > 1e-3


def test_rope_rotates_interleaved_pairs_by_position():
    model = small_model()
    d = 16
    freqs = model.rope.freqs
    assert torch.allclose(freqs, 1.0 / 10000 ** (torch.arange(0, d, 2).float() / d))
    cos, sin = model.rope.tables(5, torch.device("cpu"), torch.float32)
    x = torch.randn(5, d)
    got = apply_rope(x, cos, sin)
    for p in range(5):
        for i in range(d // 2):
            a = p * freqs[i]
            x0, x1 = x[p, 2 * i], x[p, 2 * i + 1]
            assert torch.allclose(got[p, 2 * i], x0 * torch.cos(a) - x1 * torch.sin(a), atol=1e-5)
            assert torch.allclose(got[p, 2 * i + 1], x1 * torch.cos(a) + x0 * torch.sin(a), atol=1e-5)


def test_rope_tables_follow_loaded_weights():
    model = small_model()
    before = model.rope.tables(3, torch.device("cpu"), torch.float32)[1].clone()
    state = model.state_dict()
    state["rope.freqs"] = state["rope.freqs"] * 2
    model.load_state_dict(state)
    after = model.rope.tables(3, torch.device("cpu"), torch.float32)[1]
    assert not torch.allclose(before, after)
    assert torch.allclose(after[1], torch.sin(model.rope.freqs).repeat_interleave(2))  # position 1, new freqs


def test_rope_tables_in_bf16_are_built_as_rotary_embedding_torch():
    """rotary_embedding_torch 0.5.3 (the release's pin), restated for a bf16 model: positions arange(T) in
    the queries' dtype, cast to the freqs parameter's (bf16), einsum('..., f -> ... f') in bf16, each angle
    repeated for its pair, cos / sin of the bf16 angles; apply_rotary_emb then rotates in bf16."""
    model = small_model().to(torch.bfloat16)
    frames, d = 16, 16
    freqs = model.rope.freqs
    assert freqs.dtype == torch.bfloat16
    pos = torch.arange(frames, dtype=torch.bfloat16)
    angles = torch.einsum("..., f -> ... f", pos.type(freqs.dtype), freqs).repeat_interleave(2, dim=-1)
    cos, sin = model.rope.tables(frames, torch.device("cpu"), torch.bfloat16)
    assert cos.dtype == sin.dtype == torch.bfloat16
    assert torch.equal(cos, angles.cos()) and torch.equal(sin, angles.sin())
    # the rounding of the angles shows: exact angles rounded after cos / sin are other tables
    exact = torch.outer(torch.arange(frames, dtype=torch.float32), freqs.float()).repeat_interleave(2, dim=-1)
    assert not torch.equal(cos, exact.cos().to(torch.bfloat16))
    q = torch.randn(3, 2, frames, d).to(torch.bfloat16)  # (B*S, heads, T, head_dim)
    rotate_half = torch.stack((-q[..., 1::2], q[..., 0::2]), dim=-1).flatten(-2)
    assert torch.equal(apply_rope(q, cos, sin), q * angles.cos() * 1.0 + rotate_half * angles.sin() * 1.0)
    # fp32 is the exact maths, as before
    cos32, _ = small_model().rope.tables(frames, torch.device("cpu"), torch.float32)
    assert torch.allclose(cos32, torch.outer(torch.arange(frames).float(), small_model().rope.freqs)
                          .repeat_interleave(2, dim=-1).cos(), atol=1e-6)


def test_final_layer_with_x_mask_follows_the_release_order():
    """T2IFinalLayer (opensora/models/layers/blocks.py at v1.2.0), restated in its (B, T*S, C) layout:
    x = t2i_modulate(norm_final(x), shift, scale); x_zero = t2i_modulate(norm_final(x), shift_zero,
    scale_zero) of that modulated x; frames with x_mask False take x_zero; then linear."""
    layer = small_model().final_layer
    b, frames, s, c = 2, 3, 4, 32
    g = torch.Generator().manual_seed(0)
    x, t, t0 = torch.randn(b, frames, s, c, generator=g), torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    x_mask = torch.tensor([[True, False, True], [False, True, True]])

    def norm_final(h):
        return (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-6)

    with torch.no_grad():
        shift, scale = (layer.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # (B, 1, C) each
        shift0, scale0 = (layer.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
        h = x.reshape(b, frames * s, c)
        h = norm_final(h) * (1 + scale) + shift
        h0 = norm_final(h) * (1 + scale0) + shift0
        mixed = torch.where(x_mask[:, :, None, None], h.view(b, frames, s, c), h0.view(b, frames, s, c))
        expected = mixed @ layer.linear.weight.T + layer.linear.bias
        got = layer(x, t, t0, x_mask)
        # one norm with per-frame shift / scale: what the release does not do
        at_t = norm_final(x) * (1 + scale[:, None]) + shift[:, None]
        at_t0 = norm_final(x) * (1 + scale0[:, None]) + shift0[:, None]
        single = layer.linear(torch.where(x_mask[:, :, None, None], at_t, at_t0))
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got[x_mask], single[x_mask], atol=1e-5)
    assert (got[~x_mask] - single[~x_mask]).abs().max() > 0.1


def test_temporal_self_attention_matches_hand_written():
    """qkv -> per-head RMS norm -> RoPE over frames -> softmax(q k^T / sqrt(d)) v -> proj."""
    model = small_model()
    attn = model.temporal_blocks[0].attn
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):
            norm.weight.copy_(torch.rand(16) + 0.5)
        x = torch.randn(3, 4, 32)  # (B*S, T, C)
        rope = model.rope.tables(4, x.device, x.dtype)
        got = attn(x, rope)
        q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).view(3, 4, 3, 2, 16).permute(2, 0, 3, 1, 4)

        def rms(h, w):
            return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w

        def rot(h):  # rotate each (even, odd) pair by position * frequency
            ang = torch.arange(4.0)[:, None] * model.rope.freqs[None]  # (T, d/2)
            e, o = h[..., 0::2], h[..., 1::2]
            return torch.stack([e * ang.cos() - o * ang.sin(), o * ang.cos() + e * ang.sin()], -1).flatten(-2)

        q, k = rot(rms(q, attn.q_norm.weight)), rot(rms(k, attn.k_norm.weight))
        weights = torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1)
        expected = (weights @ v).transpose(1, 2).reshape(3, 4, 32) @ attn.proj.weight.T + attn.proj.bias
    assert torch.allclose(got, expected, atol=1e-5)


def test_cross_attention_mask_equals_packed_block_diagonal_attention():
    """The original packs every sample's valid text tokens into one sequence with a block-diagonal mask."""
    cross = small_model().spatial_blocks[0].cross_attn
    x, y = torch.randn(2, 7, 32), torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        got = cross(x, y, mask)
        lens = mask.sum(1).tolist()
        packed_y = y[mask]  # (sum(lens), C)
        q = cross.q_linear(x.reshape(14, 32)).view(14, 2, 16).transpose(0, 1)  # (h, B*N, d)
        k, v = cross.kv_linear(packed_y).view(-1, 2, 2, 16).permute(1, 2, 0, 3)  # (2, h, L, d)
        block = torch.block_diag(*[torch.ones(7, n) for n in lens]).bool()  # (B*N, L)
        scores = (q @ k.transpose(-1, -2) / 4.0).masked_fill(~block, float("-inf"))
        expected = cross.proj((scores.softmax(-1) @ v).transpose(0, 1).reshape(2, 7, 32))
    assert torch.allclose(got, expected, atol=1e-5)


def test_pos_embed_matches_hand_formula():
    model = small_model()
    h, w, scale, base = 2, 3, 0.5, 2
    table = model.pos_embed(h, w, scale, base, torch.device("cpu"))
    omega = 1.0 / 10000 ** (torch.arange(8, dtype=torch.float64) / 8)  # C/4 frequencies
    for r in range(h):
        for c in range(w):
            col, row = c / scale * base / w, r / scale * base / h
            expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega),
                                  torch.sin(row * omega), torch.cos(row * omega)]).float()
            assert torch.allclose(table[r * w + c], expected, atol=1e-6)


def test_output_layout_and_odd_latent_padding():
    """Final projection channels are (p_t, p_h, p_w, C_out) as the original's unpatchify; odd latent sizes
    are padded to the patch and cropped back."""
    model = small_model()
    out_c = model.out_channels
    assert out_c == 8
    with torch.no_grad():
        model.final_layer.linear.weight.zero_()
        model.final_layer.linear.bias.copy_(torch.arange(4 * out_c, dtype=torch.float32))
        x = torch.randn(1, 4, 2, 5, 7)
        y = torch.randn(1, 6, 12)
        out = model(x, torch.tensor([10.0]), y, fps=24, height=40, width=56)
    assert out.shape == (1, 8, 2, 5, 7) and out.dtype == torch.float32
    for hp in range(2):
        for wp in range(2):
            expected = torch.tensor([(hp * 2 + wp) * out_c + c for c in range(out_c)], dtype=torch.float32)
            assert torch.equal(out[0, :, 1, 2 + hp, 4 + wp], expected)


def test_padding_is_zeros_at_the_end():
    model = small_model(1)
    x, y = torch.randn(1, 4, 3, 5, 7), torch.randn(1, 6, 12)
    args = (torch.tensor([300.0]), y)
    with torch.no_grad():
        odd = model(x, *args, fps=24, height=40, width=56)
        padded = model(F.pad(x, (0, 1, 0, 1)), *args, fps=24, height=40, width=56)
    assert torch.allclose(odd, padded[:, :, :, :5, :7], atol=1e-5)


def test_fps_and_text_change_the_output():
    model = small_model(2)
    x, y = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 6, 12)
    with torch.no_grad():
        a = model(x, torch.tensor([500.0]), y, fps=24)
        b = model(x, torch.tensor([500.0]), y, fps=12)
        mask = torch.tensor([[1, 1, 0, 0, 0, 0]])
        c = model(x, torch.tensor([500.0]), y, mask)
        d = model(x, torch.tensor([500.0]), y[:, :2])  # masked tokens act as absent
    assert (a - b).abs().max() > 1e-4
    assert torch.allclose(c, d, atol=1e-5)


def test_save_load_roundtrip_and_mismatch(tmp_path):
    from safetensors.torch import load_file, save_file

    model = small_model(3)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["STDiT3"] and config["pred_sigma"] is True
    assert (tmp_path / "model.safetensors").exists()  # the hub repo's file name
    again = STDiT3.from_pretrained(str(tmp_path))
    x, y = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 6, 12)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([7.0]), y), again(x, torch.tensor([7.0]), y))
    state = load_file(tmp_path / "model.safetensors")
    state["rope.inv_freq"] = state.pop("rope.freqs")
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): rope.freqs") as err:
        STDiT3.from_pretrained(str(tmp_path))
    assert "unexpected keys (1): rope.inv_freq" in str(err.value)


# ---- rectified flow ------------------------------------------------------------------------------------
def test_timestep_transform_hand_computed():
    # 512x512, 17 frames -> 5 latent frames: ratio sqrt(5); t = 1/2 maps to sqrt(5) / (1 + sqrt(5))
    assert timestep_transform(500.0, 512, 512, 17) == pytest.approx(1000 * 0.6909830056250526, rel=1e-12)
    assert timestep_transform(500.0, 512, 512, 1) == pytest.approx(500.0)  # ratio 1: unchanged
    assert timestep_transform(1000.0, 480, 854, 51) == pytest.approx(1000.0)
    # 480x854, 51 frames ("2s" at 480p 9:16): ratio = sqrt(480*854/512^2) * sqrt(15) = 4.84312...
    r = math.sqrt(480 * 854 / 262144) * math.sqrt(15)
    assert r == pytest.approx(4.84312, abs=1e-5)
    assert timestep_transform(100.0, 480, 854, 51) == pytest.approx(1000 * r * 0.1 / (1 + (r - 1) * 0.1))
    assert timestep_transform(100.0, 480, 854, 51) == pytest.approx(349.858, abs=1e-3)
    # 18 frames count as 17 (the original drops the remainder)
    assert timestep_transform(500.0, 512, 512, 18) == timestep_transform(500.0, 512, 512, 17)


def test_scheduler_steps_hand_computed():
    s = RectifiedFlowScheduler()
    ts = s.set_timesteps(2, 512, 512, 17)
    assert ts.tolist() == pytest.approx([1000.0, 690.9830056])
    assert s.step_sizes.tolist() == pytest.approx([0.3090169944, 0.6909830056])
    z, v = torch.full((1, 2), 2.0), torch.tensor([[1.0, -1.0]])
    assert s.step(v, 0, z)[0].tolist() == pytest.approx([2.3090170, 1.6909830])
    assert RectifiedFlowScheduler(use_timestep_transform=False).timesteps(30)[:3] == pytest.approx(
        [1000.0, 1000 * 29 / 30, 1000 * 28 / 30])
    assert RectifiedFlowScheduler().timesteps(30, 512, 512, 1)[-1] == pytest.approx(1000 / 30)


def test_exact_velocity_recovers_the_data_in_any_schedule():
    """On the straight path x_t = (1 - t) data + t noise the velocity is data - noise everywhere, and the
    step sizes sum to 1: sampling from pure noise must land on the data."""
    s = RectifiedFlowScheduler()
    g = torch.Generator().manual_seed(0)
    data, noise = torch.randn(2, 4, 3, 2, 2, generator=g), torch.randn(2, 4, 3, 2, 2, generator=g)
    ts = s.set_timesteps(30, 480, 854, 51)
    x = noise.clone()
    for i in range(len(ts)):
        assert torch.allclose(x, s.add_noise(data, noise, ts[i].expand(2)), atol=1e-5)
        x = s.step(data - noise, i, x)
    assert torch.allclose(x, data, atol=1e-5)


# ---- VAE ------------------------------------------------------------------------------------------------
def test_vae_shapes_odd_frames_and_sampling(tiny):
    vae = tiny.vae
    g = torch.Generator().manual_seed(0)
    for frames in (1, 18):
        x = torch.rand(1, 3, frames, 24, 40, generator=g) * 2 - 1
        z = vae.encode(x, sample_posterior=False)
        assert z.shape == (1, 4, vae.latent_frames(frames), 3, 5)
        assert vae.latent_frames(frames) == {1: 1, 18: 6}[frames]
        assert vae.decode(z, frames).shape == (1, 3, frames, 24, 40)
    assert [vae.latent_frames(n) for n in (17, 34, 51, 102)] == [5, 10, 15, 30]
    x = torch.rand(1, 3, 5, 16, 16, generator=g) * 2 - 1
    a = vae.encode(x, sample_posterior=False)
    assert a.shape == (1, 4, 2, 2, 2)
    s1 = vae.encode(x, generator=torch.Generator().manual_seed(1))
    s2 = vae.encode(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s1, s2) and not torch.equal(s1, a)  # the posterior is sampled, reproducibly
    with pytest.raises(ValueError, match="latent frames"):
        vae.decode(a, 17)


def test_temporal_convs_are_causal(tiny):
    """A temporal-VAE conv at frame t sees frames <= t only (zeros are padded in front)."""
    conv = tiny.vae.temporal_vae.encoder.conv_in
    x = torch.randn(1, 4, 6, 5, 5)
    later = x.clone()
    later[:, :, 4:] = torch.randn(1, 4, 2, 5, 5)
    with torch.no_grad():
        a, b = conv(x), conv(later)
    assert a.shape == (1, 16, 6, 5, 5)
    assert torch.equal(a[:, :, :4], b[:, :, :4]) and (a[:, :, 4:] - b[:, :, 4:]).abs().max() > 1e-3
    down = tiny.vae.temporal_vae.encoder.conv_blocks[1]  # stride 2 in time: 8 frames -> 4
    assert down(torch.randn(1, 32, 8, 3, 3)).shape == (1, 32, 4, 3, 3)


def test_vae_save_load_roundtrip(tiny, tmp_path):
    tiny.vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["micro_frame_size"] == 17 and config["scale"] == [3.85, 2.32, 2.33, 3.06]
    again = OpenSoraVAE.from_pretrained(str(tmp_path))
    z = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(tiny.vae.decode(z, 5), again.decode(z, 5), atol=1e-6)


# ---- pipeline -----------------------------------------------------------------------------------------------
def test_config_sizes_and_durations():
    c = OpenSoraConfig()
    assert (c.height, c.width, c.num_frames, c.num_inference_steps, c.guidance_scale, c.fps) == (
        480, 854, 51, 30, 7.0, 24)
    assert c.model_path == "hpcai-tech/OpenSora-STDiT-v3"
    assert [frame_count(d) for d in ("2s", "4s", "8s", "16s", 1, 17, "34")] == [51, 102, 204, 408, 1, 17, 34]
    assert image_size("720p", "16:9") == (1280, 720) and image_size("144p", "1:1") == (192, 192)
    assert (OpenSoraConfig(resolution="240p").height, OpenSoraConfig(resolution="240p").width) == (240, 426)
    tiny = OpenSoraConfig(preset="tiny")
    assert (tiny.height, tiny.width, tiny.num_frames) == (64, 64, 17)
    assert OpenSoraConfig(preset="tiny", resolution="144p", aspect_ratio="1:1").height == 192  # named size wins
    assert OpenSoraConfig(preset="tiny", num_frames="4s").num_frames == 102


def test_yaml_roundtrip(tmp_path):
    config = OpenSoraConfig(preset="tiny", resolution="144p", num_frames="2s", guidance_scale=4.0)
    config.to_yaml(str(tmp_path / "c.yaml"))
    again = OpenSoraConfig.from_yaml(str(tmp_path / "c.yaml"))
    assert again == config and (again.height, again.width, again.num_frames) == (144, 256, 51)


def test_null_caption_is_the_uncond_branch(tiny):
    text, mask = tiny.encode_prompt([PROMPT], None, do_cfg=True)
    null = tiny.transformer.y_embedder.y_embedding
    assert text.shape == (2, 300, 32) and torch.equal(text[0], null)
    assert mask is not None and torch.equal(mask[0], mask[1])  # the null caption is masked like its prompt
    assert int(mask[1].sum()) == len(tiny.tokenizer(PROMPT).input_ids) == 8


def test_generate_matches_the_release_sampling_loop(tiny, monkeypatch):
    """The release's loop written out: [cond; null] batch, first half of the channels, cfg, Euler steps on
    the transformed timesteps; our pipeline must reach the same latents."""
    captured = {}

    def decode(z, num_frames):
        captured["z"] = z
        return torch.zeros(z.shape[0], 3, num_frames, z.shape[3] * 8, z.shape[4] * 8)

    monkeypatch.setattr(tiny.vae, "decode", decode)
    tiny.generate(PROMPT, seed=7, num_inference_steps=4, guidance_scale=7.0)
    prompt = [PROMPT + " aesthetic score: 6.5."]
    from videosys.utils.text import encode_text

    y, mask = encode_text(tiny.tokenizer, tiny.text_encoder, prompt, 300, "cpu")
    y = torch.cat([y, tiny.transformer.y_embedder.y_embedding[None]])
    z = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(7))
    ts = [(1 - i / 4) * 1000 for i in range(4)]
    ts = [timestep_transform(t, 64, 64, 17) for t in ts]
    with torch.no_grad():
        for i, t in enumerate(ts):
            out = tiny.transformer(torch.cat([z, z]), torch.tensor([t, t]), y, mask, fps=torch.tensor([24.0] * 2),
                                   height=torch.tensor([64.0] * 2), width=torch.tensor([64.0] * 2))
            cond, uncond = out.chunk(2, dim=1)[0].chunk(2)
            dt = (t - (ts[i + 1] if i < 3 else 0.0)) / 1000
            z = z + (uncond + 7.0 * (cond - uncond)) * dt
    assert torch.allclose(captured["z"], z, atol=1e-4)


def test_seeds_and_negative_prompt(tiny):
    kw = dict(num_inference_steps=3, num_frames=1, height=32, width=32)
    a, b, c = (tiny.generate(PROMPT, seed=s, **kw).video for s in (1, 1, 2))
    assert a.shape == (1, 1, 32, 32, 3) and torch.equal(a, b)
    assert (a.float() - c.float()).abs().mean() > 1.0
    d = tiny.generate(PROMPT, negative_prompt="a blue square", seed=1, **kw).video
    assert (a.float() - d.float()).abs().mean() > 0.1
    assert torch.equal(tiny.generate(PROMPT, negative_prompt="", seed=1, **kw).video, a)  # "" = no negative prompt


def test_end_to_end_mp4_and_pipeline_folder(tiny, tmp_path):
    engine = VideoSysEngine(OpenSoraConfig(preset="tiny", progress_bar=False))
    out = engine.generate(PROMPT, seed=0, num_inference_steps=3)
    assert out.video.shape == (1, 17, 64, 64, 3) and out.video.dtype == torch.uint8
    path = engine.save_video(out.video[0], str(tmp_path / "clip.mp4"))
    frames, fps = read_video(path)
    assert frames.shape == (17, 64, 64, 3) and fps == 24
    assert np.abs(frames.astype(float) - out.video[0].numpy().astype(float)).mean() < 12
    tiny.save_pretrained(str(tmp_path / "pipe"))
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["transformer"][1] == "STDiT3" and index["vae"][1] == "VideoAutoencoderPipeline"
    loaded = OpenSoraPipeline.from_config(OpenSoraConfig(model_path=str(tmp_path / "pipe"), preset="tiny",
                                                         progress_bar=False))
    kw = dict(seed=4, num_inference_steps=2, num_frames=1, height=32, width=32)
    assert torch.equal(loaded.generate(PROMPT, **kw).video, tiny.generate(PROMPT, **kw).video)


def test_cli_generate(tmp_path):
    from videosys.cli import main as cli_main

    out = tmp_path / "cli.mp4"
    rc = cli_main(["generate", "--model", "open-sora", "--preset", "tiny", "--prompt", PROMPT, "--output", str(out),
                   "--num-frames", "1", "--height", "32", "--width", "48", "--steps", "2", "--no-progress"])
    assert rc == 0
    frames, fps = read_video(str(out))
    assert frames.shape == (1, 32, 48, 3) and fps == 24


@pytest.mark.parametrize("kwargs,match", [
    (dict(resolution="1080x"), "unknown resolution"), (dict(aspect_ratio="4:5"), "unknown aspect_ratio"),
    (dict(num_frames=5), "num_frames=5"), (dict(num_frames=0), "num_frames"), (dict(num_frames="3s"), "3s"),
    (dict(prompt=""), "prompt"), (dict(prompt=["ok", "  "]), "prompt"), (dict(height=4), "at least 8"),
    (dict(num_inference_steps=0), "num_inference_steps"), (dict(negative_prompt=3), "negative_prompt"),
    (dict(fps=0), "fps"),
])
def test_bad_generation_input(tiny, kwargs, match):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=match):
        tiny.generate(**kwargs)


def test_bad_config():
    with pytest.raises(ValueError, match="unknown resolution"):
        OpenSoraConfig(resolution="4k")
    with pytest.raises(ValueError, match="unknown aspect_ratio"):
        OpenSoraConfig(aspect_ratio="16/9")
    with pytest.raises(ValueError, match="num_frames=16"):
        OpenSoraConfig(num_frames=16)
    with pytest.raises(ValueError, match="preset"):
        OpenSoraConfig(preset="huge")
    with pytest.raises(FileNotFoundError, match="tiny"):
        OpenSoraPipeline.from_config(OpenSoraConfig(model_path="no-such-org/no-such-model"))
