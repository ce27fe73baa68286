"""LaVie's interpolation stage: its transformer block against the release's (attention.py, use_first_frame=True,
no relative positions, the temporal attention after the MLP) restated here, every block in place, the UNet against
the base UNet where they must agree, the copied latents against the release's 61-frame encoding, and the sampler
against the release's ADM DDIM loop written out."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videosys.core.config import BaseConfig
from videosys.models.lavie.interpolation import (AdmDDIM, InterpolationSettings, LaVieInterpolationStage,
                                                 LaVieInterpolationUNet, interpolation_unet_config, output_frames)
from videosys.models.lavie.unet import LaVieUNet3DModel, LaVieUNetConfig
from videosys.models.lavie.vsr import tiny_clip_text
from videosys.utils.text import build_tiny_tokenizer

BASE = LaVieUNetConfig(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                       up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, attention_head_dim=1,
                       cross_attention_dim=32)


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    unet = LaVieInterpolationUNet(interpolation_unet_config(BASE)).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "attn_temp.to_out" in name:  # zero-initialised in the release: random, so the test sees them
                p.copy_(torch.randn_like(p) * 0.2)
    return unet


# ---- the release's BasicTransformerBlock with use_first_frame=True (interpolation/models/attention.py), restated:
# attn1 sparse-causal, attn2, the MLP, then the temporal attention
def ref_attention(p, name, x, keys, heads):  # CrossAttention: heads to batch, baddbmm, softmax, bmm
    def split(t):
        b, n, d = t.shape
        return t.reshape(b, n, heads, d // heads).permute(0, 2, 1, 3).reshape(b * heads, n, d // heads)

    q = split(F.linear(x, p[name + ".to_q.weight"]))
    k, v = split(keys[0]), split(keys[1])
    scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1]), q, k.transpose(-1, -2), beta=0,
                           alpha=q.shape[-1] ** -0.5)
    out = torch.bmm(scores.softmax(-1), v)
    n, d = out.shape[1], out.shape[2]
    out = out.reshape(-1, heads, n, d).permute(0, 2, 1, 3).reshape(-1, n, d * heads)
    return F.linear(out, p[name + ".to_out.0.weight"], p[name + ".to_out.0.bias"])


def ref_block(p, x, text, frames, heads):
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], p[n + ".weight"], p[n + ".bias"])  # noqa: E731
    kv = lambda t, n: (F.linear(t, p[n + ".to_k.weight"]), F.linear(t, p[n + ".to_v.weight"]))  # noqa: E731
    # SparseCausalAttention: keys / values of frame 0 and of frame i - 1, concatenated on the tokens
    n = ln(x, "norm1")
    k, v = kv(n, "attn1")
    former = torch.arange(frames) - 1
    former[0] = 0
    k, v = (t.reshape(-1, frames, *t.shape[1:]) for t in (k, v))
    k, v = (torch.cat([t[:, [0] * frames], t[:, former]], dim=2).flatten(0, 1) for t in (k, v))
    x = ref_attention(p, "attn1", n, (k, v), heads) + x
    ctx = text.repeat_interleave(frames, 0)
    n = ln(x, "norm2")
    x = ref_attention(p, "attn2", n, kv(ctx, "attn2"), heads) + x
    h, gate = F.linear(ln(x, "norm3"), p["ff.net.0.proj.weight"], p["ff.net.0.proj.bias"]).chunk(2, -1)
    x = F.linear(h * F.gelu(gate), p["ff.net.2.weight"], p["ff.net.2.bias"]) + x  # the MLP, then the temporal attention
    d = x.shape[1]
    x = x.reshape(-1, frames, d, x.shape[2]).transpose(1, 2).reshape(-1, frames, x.shape[2])  # (b f) d c -> (b d) f c
    n = ln(x, "norm_temp")
    x = ref_attention(p, "attn_temp", n, kv(n, "attn_temp"), heads) + x
    return x.reshape(-1, d, frames, x.shape[2]).transpose(1, 2).reshape(-1, d, x.shape[2])


def test_interpolation_block_equals_the_release_block():
    unet = tiny_unet()
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    with torch.no_grad():
        for q in block.parameters():
            q.copy_(torch.randn_like(q) * 0.3)
    g = torch.Generator().manual_seed(0)
    frames = 5
    x, text = torch.randn(2 * frames, 6, 32, generator=g), torch.randn(2, 4, 32, generator=g)
    with torch.no_grad():
        ours = block(x, text, frames, None)
        ref = ref_block(block.state_dict(), x, text, frames, block.attn1.heads)
    assert (ours - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max())


def test_every_block_of_the_interpolation_unet_is_the_release_block():
    """In the whole UNet (8 input channels, real frame / text layout): each block's output against the release's
    block on the same input; the rest of the UNet is the base UNet's (tests/test_lavie.py checks it against the
    release's forward)."""
    from videosys.models.lavie.interpolation import SparseCausalBlock

    unet = tiny_unet()
    seen = []

    def check(block, args, out):
        x, text, frames, _ = args
        seen.append((out - ref_block(block.state_dict(), x, text, frames, block.attn1.heads)).abs().max().item())

    handles = [m.register_forward_hook(check) for m in unet.modules() if isinstance(m, SparseCausalBlock)]
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        unet(torch.randn(2, 8, 5, 8, 8, generator=g), torch.tensor([980, 20]), torch.randn(2, 7, 32, generator=g))
    for handle in handles:
        handle.remove()
    assert len(seen) == 4 and max(seen) < 1e-5, seen  # 1 down, 1 mid and 2 up transformers


def test_interpolation_unet_one_frame_is_the_base_unet():
    """With one frame the sparse-causal attention sees frame 0 twice, and with the temporal attention's output at its
    release initialisation (zero) where it sits in the block does not matter: the interpolation UNet is then the base
    UNet (same weights, 8 input channels); with more frames they differ."""
    unet = tiny_unet()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "attn_temp.to_out" in name:
                p.zero_()
    base = LaVieUNet3DModel(LaVieUNetConfig(**{**vars(BASE), "in_channels": 8})).eval()
    state = base.state_dict()
    missing = [k for k in state if k not in unet.state_dict()]
    assert missing and all("time_rel_pos_bias" in k for k in missing)  # the only keys the base has beyond ours
    base.load_state_dict({**state, **unet.state_dict()})
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, 4, 32, generator=g)
    with torch.no_grad():
        one = torch.randn(1, 8, 1, 8, 8, generator=g)
        assert (unet(one, 500, text) - base(one, 500, text)).abs().max() < 1e-5
        three = torch.randn(1, 8, 3, 8, 8, generator=g)
        assert (unet(three, 500, text) - base(three, 500, text)).abs().max() > 1e-3


@pytest.fixture(scope="module")
def stage():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(77)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1).eval()
    return LaVieInterpolationStage(BaseConfig(device="cpu", progress_bar=False), tiny_unet(), vae,
                                   tiny_clip_text(len(tokenizer), 32), tokenizer)


def test_copied_latents_are_the_release_s(stage):
    """interpolation/sample.py: 61 frames spread evenly over the 16 (np.linspace), encoded with a posterior sample,
    every 4th latent kept, repeated 4 times, [1:-2]."""
    video = torch.randint(0, 256, (1, 4, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    frames = output_frames(4)
    index = np.linspace(0, 3, frames, dtype=int)  # the release's frame_indice over the input's frames
    pixels = (video[0, index].permute(0, 3, 1, 2).float() / 255 - 0.5) * 2
    with torch.no_grad():
        z = stage.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(5)) * 0.18215
        kept = z[list(range(0, frames + 1, 4))]  # lr_indice = range(0, 62, 4), within the 61 frames
        ref = kept.permute(1, 0, 2, 3)[None].repeat_interleave(4, dim=2)[:, :, 1:-2]
        ours = stage.copied_latents(video, 5)
    assert ours.shape == ref.shape == (1, 4, frames, 4, 4)
    assert (ours - ref).abs().max() < 1e-5


def release_ddim_loop(stage, z, copied, text, steps, scale):
    """create_diffusion(str(steps)).ddim_sample_loop(model.forward_with_cfg, ..., eta=0, use_concat, copy_no_mask),
    the release's layout: rows [cond; uncond], both halves of x the same, guidance on the first 4 channels."""
    betas = np.linspace(0.0001, 0.02, 1000, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    frac, cur, use = 999 / (steps - 1), 0.0, []
    for _ in range(steps):
        use.append(round(cur))
        cur += frac
    last, new_betas, timestep_map = 1.0, [], []
    for i, a in enumerate(ac):
        if i in set(use):
            new_betas.append(1 - a / last)
            last = a
            timestep_map.append(i)
    ac = np.cumprod(1.0 - np.array(new_betas))
    ac_prev = np.append(1.0, ac[:-1])
    extract = lambda arr, t: torch.from_numpy(arr)[t].float()  # noqa: E731  _extract_into_tensor
    x = torch.cat([z, z])
    x_start = torch.cat([copied, copied])
    for i in reversed(range(steps)):
        t = torch.tensor([i] * 2)
        half = torch.cat([x, x_start], 1)[:1]
        out = stage.unet(torch.cat([half, half]), torch.tensor(timestep_map)[t], text)
        cond, uncond = out[:, :4].chunk(2)
        eps = torch.cat([uncond + scale * (cond - uncond)] * 2)
        recip, recipm1 = extract(np.sqrt(1.0 / ac), t)[0], extract(np.sqrt(1.0 / ac - 1), t)[0]
        x0 = recip * x - recipm1 * eps
        eps = (recip * x - x0) / recipm1
        prev = extract(ac_prev, t)[0]
        x = x0 * torch.sqrt(prev) + torch.sqrt(1 - prev - 0.0) * eps
    return x.chunk(2)[0]


def test_interpolation_loop_equals_the_release_loop(stage):
    video = torch.randint(0, 256, (1, 3, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    settings = InterpolationSettings(num_inference_steps=4)
    with torch.no_grad():
        ours = stage.interpolate_latents(video, ["a cat"], 9, settings)
        copied = stage.copied_latents(video, 9)
        z = torch.randn(copied.shape, generator=torch.Generator().manual_seed(9))
        from videosys.models.lavie.vsr import encode_clip

        uncond, cond = encode_clip(stage.tokenizer, stage.text_encoder, ["a cat, 4k."], "None", True, "cpu").chunk(2)
        ref = release_ddim_loop(stage, z, copied, torch.cat([cond, uncond]), 4, 4.0)
    assert ours.shape == (1, 4, output_frames(3), 4, 4)
    assert (ours - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max())
    assert AdmDDIM(50).timesteps[:3].tolist() == [999, 979, 958]  # round(k * 999 / 49), from the top
    out = stage.decode(ours)
    assert out.shape == (1, 9, 8, 8, 3) and out.dtype == torch.uint8
