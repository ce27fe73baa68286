"""LaVie's VSR stage: the UNet against diffusers' x4 upscaler UNet and against the release's forward restated here
(from the release's key names, in its own layout: 5D tensors, baddbmm attention, rotary_embedding_torch's pair
rotation, T5 buckets), and the stage's loop against the release's pipeline loop written out."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from videosys.core.config import BaseConfig
from videosys.models.lavie import checkpoints
from videosys.models.lavie.vsr import LaVieVSRStage, TINY_UNET, VSRSettings, tiny_vsr_components
from videosys.models.lavie.vsr_unet import LaVieVSRUNet
from videosys.models.modules.pretrained import CheckpointMismatchError


UNET = dataclasses.replace(TINY_UNET, block_out_channels=(32, 64), attention_head_dim=2)  # 2 heads at the 2nd level


def tiny_unet(seed=0, temporal_scale=0.2):
    """A tiny UNet with every weight random, the zero-initialised temporal outputs included."""
    torch.manual_seed(seed)
    unet = LaVieVSRUNet(UNET).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "temporal" in name or "shift_conv" in name:
                p.copy_(torch.randn_like(p) * temporal_scale)
    return unet


def inputs(b=1, frames=3, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, frames, h, w, generator=g), torch.tensor(321),
            torch.randn(b, 3, frames, h, w, generator=g),
            torch.randn(b, 5, UNET.cross_attention_dim, generator=g), torch.tensor([50] * b))


# ---- the release's forward, restated (vsr/models/unet.py, unet_blocks.py, attention.py, temporal_module.py, resnet.py)
def per_frame(fn, x):  # InflatedConv3d: a 2D op on "b c f h w -> (b f) c h w"
    b, f = x.shape[0], x.shape[2]
    y = fn(x.transpose(1, 2).reshape(b * f, *x.shape[1:2], *x.shape[3:]))
    return y.reshape(b, f, *y.shape[1:]).transpose(1, 2)


class Release:
    def __init__(self, unet):
        self.p, self.c = unet.state_dict(), unet.config

    def conv(self, x, name, **kw):
        return per_frame(lambda y: F.conv2d(y, self.p[name + ".weight"], self.p[name + ".bias"], **kw), x)

    def gn(self, x, name, groups=32, eps=1e-6):
        return F.group_norm(x, groups, self.p[name + ".weight"], self.p[name + ".bias"], eps)

    def lin(self, x, name):
        return F.linear(x, self.p[name + ".weight"], self.p.get(name + ".bias"))

    def resnet3d(self, x, name, temb, eps):  # ResnetBlock3D: norms over the 5D tensor
        h = self.conv(F.silu(self.gn(x, name + ".norm1", eps=eps)), name + ".conv1", padding=1)
        h = h + self.lin(F.silu(temb), name + ".time_emb_proj")[:, :, None, None, None]
        h = self.conv(F.silu(self.gn(h, name + ".norm2", eps=eps)), name + ".conv2", padding=1)
        if name + ".conv_shortcut.weight" in self.p:
            x = self.conv(x, name + ".conv_shortcut")
        return x + h

    def resnet3dcnn(self, x, name, kernel, temb=None):
        h = F.conv3d(F.silu(self.gn(x, name + ".norm1")), self.p[name + ".conv1.weight"], self.p[name + ".conv1.bias"],
                     padding=((kernel - 1) // 2, 0, 0))
        if temb is not None:
            h = h + self.lin(F.silu(temb), name + ".time_emb_proj")[:, :, None, None, None]
        h = F.conv3d(F.silu(self.gn(h, name + ".norm2")), self.p[name + ".conv2.weight"], self.p[name + ".conv2.bias"],
                     padding=(1, 0, 0))
        return x + h

    def attention(self, x, ctx, name, heads):  # CrossAttention: heads to batch, baddbmm, softmax, bmm
        def split(t):
            b, n, d = t.shape
            return t.reshape(b, n, heads, d // heads).permute(0, 2, 1, 3).reshape(b * heads, n, d // heads)

        q = split(self.lin(x, name + ".to_q"))
        k, v = split(self.lin(ctx, name + ".to_k")), split(self.lin(ctx, name + ".to_v"))
        scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1]), q, k.transpose(-1, -2), beta=0,
                               alpha=q.shape[-1] ** -0.5)
        out = torch.bmm(scores.softmax(-1), v)
        b = out.shape[0] // heads
        out = out.reshape(b, heads, out.shape[1], -1).permute(0, 2, 1, 3).reshape(b, out.shape[1], -1)
        return self.lin(out, name + ".to_out.0")

    @staticmethod
    def rotate(t, dim=32):  # rotary_embedding_torch.rotate_queries_or_keys with RotaryEmbedding(32)
        n = t.shape[-2]
        freqs = 1.0 / (10000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        angles = torch.einsum("i,f->if", torch.arange(n).float(), freqs).repeat_interleave(2, -1)  # (n, dim)
        rot, rest = t[..., :dim], t[..., dim:]
        pairs = rot.reshape(*rot.shape[:-1], dim // 2, 2)
        half = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).reshape(rot.shape)
        return torch.cat([rot * angles.cos() + half * angles.sin(), rest], -1)

    def rel_pos_bias(self, n, name):  # RelativePositionBias(heads, max_distance=32)
        rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
        m, buckets, ret = -rel, 16, 0
        ret = ret + (m < 0).long() * buckets
        m = m.abs()
        large = 8 + (torch.log(m.float() / 8) / math.log(32 / 8) * (buckets - 8)).long()
        large = torch.min(large, torch.full_like(large, buckets - 1))
        ret = ret + torch.where(m < 8, m, large)
        return self.p[name + ".relative_attention_bias.weight"][ret].permute(2, 0, 1)

    def temporal_attention(self, x, name, heads):  # TemporalAttention._attention
        q, k, v = (self.lin(x, f"{name}.to_{c}").reshape(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3)
                   for c in "qkv")
        q = self.rotate(q * q.shape[-1] ** -0.5)
        k = self.rotate(k)
        scores = torch.einsum("...hid,...hjd->...hij", q, k)
        scores = scores + self.rel_pos_bias(x.shape[1], name + ".time_rel_pos_bias")
        scores = scores - scores.amax(-1, keepdim=True)
        out = torch.einsum("...hij,...hjd->...hid", scores.softmax(-1), v)
        return self.lin(out.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1), name + ".to_out.0")

    def ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.p[name + ".weight"], self.p[name + ".bias"])

    def transformer3d(self, x, name, ctx, heads, only_cross):
        b, c, f, h, w = x.shape
        ctx = ctx.repeat_interleave(f, 0)
        x = self.resnet3dcnn(x, name + ".resblock_temporal", 3)
        x = x.transpose(1, 2).reshape(b * f, c, h, w)
        residual = x
        t = self.lin(self.gn(x, name + ".norm").permute(0, 2, 3, 1).reshape(b * f, h * w, c), name + ".proj_in")
        blk = name + ".transformer_blocks.0"
        n = self.ln(t, blk + ".norm1")
        t = self.attention(n, ctx if only_cross else n, blk + ".attn1", heads) + t
        t = self.attention(self.ln(t, blk + ".norm2"), ctx, blk + ".attn2", heads) + t
        t = t.reshape(b, f, h * w, c).transpose(1, 2).reshape(b * h * w, f, c)  # (b f) d c -> (b d) f c
        t = self.temporal_attention(self.ln(t, blk + ".norm_temporal"), blk + ".attn_temporal", heads) + t
        t = t.reshape(b, h * w, f, c).transpose(1, 2).reshape(b * f, h * w, c)
        gate_in = self.lin(self.ln(t, blk + ".norm3"), blk + ".ff.net.0.proj")
        hidden, gate = gate_in.chunk(2, -1)
        t = self.lin(hidden * F.gelu(gate), blk + ".ff.net.2") + t
        out = self.lin(t, name + ".proj_out").reshape(b * f, h, w, c).permute(0, 3, 1, 2) + residual
        return out.reshape(b, f, c, h, w).transpose(1, 2)

    def temporal_module(self, x, name, temb):
        h = self.resnet3dcnn(x, name + ".resblocks_3d_t", 5, temb)
        h = self.resnet3d(h, name + ".resblocks_3d_s", temb, eps=1e-6)
        return x + self.conv(h, name + ".shift_conv")

    def forward(self, sample, timestep, low_res, ctx, level):
        from diffusers.models.embeddings import get_timestep_embedding

        c, eps = self.c, self.c.norm_eps
        heads = c.attention_head_dim
        x = torch.cat([sample, low_res], 1)
        t = get_timestep_embedding(timestep.reshape(1).expand(x.shape[0]), c.block_out_channels[0], True, 0)
        emb = self.lin(F.silu(self.lin(t, "time_embedding.linear_1")), "time_embedding.linear_2")
        emb = emb + self.p["class_embedding.weight"][level]
        x = self.conv(x, "conv_in", padding=1)
        skips = [x]
        for i, kind in enumerate(c.down_block_types):
            for j in range(c.layers_per_block):
                x = self.resnet3d(x, f"down_blocks.{i}.resnets.{j}", emb, eps)
                if kind.startswith("CrossAttn"):
                    x = self.transformer3d(x, f"down_blocks.{i}.attentions.{j}", ctx, heads, c.only_cross_attention[i])
                skips.append(x)
            if i < len(c.down_block_types) - 1:
                x = self.conv(x, f"down_blocks.{i}.downsamplers.0.conv", stride=2, padding=1)
                skips.append(x)
            x = self.temporal_module(x, f"down_temporal_blocks.{i}", emb)
        x = self.resnet3d(x, "mid_block.resnets.0", emb, eps)
        x = self.transformer3d(x, "mid_block.attentions.0", ctx, heads, False)
        x = self.resnet3d(x, "mid_block.resnets.1", emb, eps)
        x = self.temporal_module(x, "mid_temporal_block", emb)
        only_cross = list(reversed(c.only_cross_attention))
        for i, kind in enumerate(c.up_block_types):
            for j in range(c.layers_per_block + 1):
                x = self.resnet3d(torch.cat([x, skips.pop()], 1), f"up_blocks.{i}.resnets.{j}", emb, eps)
                if kind.startswith("CrossAttn"):
                    x = self.transformer3d(x, f"up_blocks.{i}.attentions.{j}", ctx, heads, only_cross[i])
            if i < len(c.up_block_types) - 1:
                x = F.interpolate(x, scale_factor=[1.0, 2.0, 2.0], mode="nearest")
                x = self.conv(x, f"up_blocks.{i}.upsamplers.0.conv", padding=1)
            x = self.temporal_module(x, f"up_temporal_blocks.{i}", emb)
        x = F.silu(self.gn(x, "conv_norm_out", eps=eps))
        return self.conv(x, "conv_out", padding=1)


def test_vsr_unet_equals_the_release_forward():
    unet = tiny_unet()
    args = inputs(b=2, frames=3)
    with torch.no_grad():
        ours, ref = unet(*args), Release(unet).forward(*args)
    assert ours.shape == (2, 4, 3, 8, 8)
    assert (ours - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max())
    # the temporal layers act: the same weights with them zeroed give another output
    assert (ours - ref).abs().max() < 1e-3 * (ours - tiny_unet(temporal_scale=0.0)(*args).detach()).abs().max()


def test_vsr_unet_one_frame_without_temporal_layers_is_diffusers_x4_upscaler_unet():
    """The 2D path is diffusers' UNet2DConditionModel with the x4 upscaler's config, loaded from our 2D keys."""
    from diffusers import UNet2DConditionModel

    unet = tiny_unet(temporal_scale=0.0)  # every temporal output projection zero: the temporal layers add nothing
    state = {k: v for k, v in unet.state_dict().items() if "temporal" not in k and "shift_conv" not in k}
    reference = UNet2DConditionModel(**unet.config.unet_2d_kwargs()).eval()
    reference.load_state_dict(state, strict=True)
    sample, t, low_res, ctx, level = inputs(b=2, frames=1)
    with torch.no_grad():
        ours = unet(sample, t, low_res, ctx, level)[:, :, 0]
        ref = reference(torch.cat([sample, low_res], 1)[:, :, 0], t, ctx, class_labels=level).sample
    assert (ours - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max())


def test_vsr_checkpoint_loads_by_release_names(tmp_path):
    unet = tiny_unet()
    state = dict(unet.state_dict())
    # rotary_embedding_torch's fixed frequencies sit under the UNet and every temporal attention: checked, then
    # dropped by name (the UNet computes them)
    state["temporal_rotary_emb.freqs"] = checkpoints.rotary_frequencies(32)
    block = "down_blocks.1.attentions.0.transformer_blocks.0"
    state[f"{block}.attn_temporal.rotary_emb.freqs"] = state["temporal_rotary_emb.freqs"]
    path = tmp_path / "lavie_vsr.pt"
    torch.save({"ema": state}, path)
    release = checkpoints.read_release_state(str(path))
    checkpoints.check_rotary(release, 32, str(path))
    loaded = LaVieVSRUNet.from_state_dict(release, UNET)
    args = inputs()
    assert torch.equal(loaded(*args).detach(), unet(*args).detach())
    del state["mid_temporal_block.shift_conv.weight"]
    state["mid_temporal_block.shift.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match="missing keys.*mid_temporal_block.shift_conv.weight"
                       "(.|\n)*unexpected keys.*mid_temporal_block.shift.weight"):
        LaVieVSRUNet.from_state_dict(state, UNET)


def release_vsr_loop(stage, video, prompt, seed, s: VSRSettings):
    """vsr/sample.py's chunks with the release pipeline's __call__ (CFG, noise level, diffusers' DDIM), written out."""
    frames = (video.permute(0, 4, 1, 2, 3).float() / 255 - 0.5) * 2
    generator = torch.Generator().manual_seed(seed)

    def encode(text):
        ids = stage.tokenizer([text], padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids
        return stage.text_encoder(ids)[0]

    prompt_embeds = torch.cat([encode(s.negative_prompt), encode(prompt)])
    out = []
    for start in range(0, frames.shape[2], s.chunk_frames):
        image = frames[:, :, start:start + s.chunk_frames]
        level = torch.tensor([s.noise_level], dtype=torch.long)
        noise = torch.randn(image.shape, generator=generator)
        image = stage.low_res_scheduler.add_noise(image, noise, level)
        image, level = torch.cat([image] * 2), torch.cat([level] * 2)
        stage.scheduler.set_timesteps(s.num_inference_steps)
        latents = torch.randn((1, 4, *image.shape[2:]), generator=generator) * stage.scheduler.init_noise_sigma
        for t in stage.scheduler.timesteps:
            model_in = stage.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            pred = stage.unet(model_in, t, image, prompt_embeds, level)
            uncond, cond = pred.chunk(2)
            latents = stage.scheduler.step(uncond + s.guidance_scale * (cond - uncond), t, latents, eta=0.0,
                                           generator=generator).prev_sample
        out.append(latents)
    return torch.cat(out, 2)


@pytest.fixture(scope="module")
def stage():
    return LaVieVSRStage.build(BaseConfig(device="cpu", progress_bar=False), tiny_vsr_components(0))


def test_vsr_loop_equals_the_release_loop(stage):
    video = torch.randint(0, 256, (1, 10, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    settings = VSRSettings(num_inference_steps=3, chunk_frames=4)  # 3 chunks, the last of 2 frames
    with torch.no_grad():
        ours = stage.upscale_latents(video, ["a dog running"], 7, settings)
        ref = release_vsr_loop(stage, video, "a dog running", 7, settings)
    assert ours.shape == (1, 4, 10, 8, 8)
    assert (ours - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max())
    pixels = stage.decode(ours)
    assert pixels.shape == (1, 10, 32, 32, 3) and pixels.dtype == torch.uint8


def test_vsr_refuses_a_noise_level_beyond_the_embedding(stage):
    video = torch.zeros((1, 2, 8, 8, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="noise_level must be in \\[0, 350\\]"):
        stage.upscale(video, ["a dog"], 0, VSRSettings(noise_level=351))


def test_vsr_deepcache_runs_the_shallow_ends_of_the_u():
    """The VSR UNet is a block stack as the base UNet is: a cached step on the very input of a full step gives the
    full step's output for every branch depth (each level's temporal module with its last unit)."""
    from test_lavie_cache import assert_deepcache_splits_exactly

    unet = tiny_unet()
    args = inputs(b=2, frames=3)
    assert_deepcache_splits_exactly(unet, lambda: unet(*args), 321.0, atol=1e-5)
