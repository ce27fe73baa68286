"""LaVie's base stage: the 3D UNet against the release's forward restated here in plain torch (its key names, tiny
random weights), the sampling loop against the release's loop written out, the release's .pt layout saved and loaded
back strictly, the `stages` field, and sp refused."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videosys.models.lavie import checkpoints
from videosys.models.lavie.pipeline import TINY_UNET, LaVieConfig, LaViePipeline
from videosys.models.lavie.unet import LaVieUNet3DModel, LaVieUNetConfig

from conftest import PROMPT


@pytest.fixture(scope="module")
def tiny():
    return LaViePipeline.from_config(LaVieConfig(preset="tiny", progress_bar=False))


# ---- the release's UNet forward (base/models/unet.py, unet_blocks.py, resnet.py, attention.py), restated -------------
def release_unet(W: dict, cfg: LaVieUNetConfig, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The release's UNet3DConditionModel.forward at inference over a state dict in its keys: 2D layers on
    (b f) c h w, ResNet / conv_norm_out GroupNorms on the 5D tensor, spatial attention per frame, the text repeated per
    frame, temporal attention per position with rotary_embedding_torch's interleaved rotation of the first 32 channels
    of each (pre-scaled) query and key and the relative position bias, softmax after subtracting the row max."""
    heads, groups = cfg.attention_head_dim, cfg.norm_num_groups
    b, _, f = x.shape[:3]

    def frames_2d(h):  # b c f h w -> (b f) c h w
        return h.permute(0, 2, 1, 3, 4).reshape(-1, *h.shape[1:2], *h.shape[3:])

    def frames_5d(h):  # (b f) c h w -> b c f h w
        return h.reshape(b, f, *h.shape[1:]).permute(0, 2, 1, 3, 4)

    def conv(name, h, stride=1, padding=1):
        return frames_5d(F.conv2d(frames_2d(h), W[name + ".weight"], W[name + ".bias"], stride, padding))

    def linear(name, h):
        return F.linear(h, W[name + ".weight"], W.get(name + ".bias"))

    def resnet(p, h, emb):
        y = conv(p + ".conv1", F.silu(F.group_norm(h, groups, W[p + ".norm1.weight"], W[p + ".norm1.bias"], 1e-5)))
        y = y + linear(p + ".time_emb_proj", F.silu(emb))[:, :, None, None, None]
        y = conv(p + ".conv2", F.silu(F.group_norm(y, groups, W[p + ".norm2.weight"], W[p + ".norm2.bias"], 1e-5)))
        if p + ".conv_shortcut.weight" in W:
            h = conv(p + ".conv_shortcut", h, padding=0)
        return h + y

    def layer_norm(name, h):
        return F.layer_norm(h, h.shape[-1:], W[name + ".weight"], W[name + ".bias"])

    def buckets(n_frames):  # RelativePositionBias._relative_position_bucket(k - q), 32 buckets, max_distance 32
        pos = torch.arange(n_frames)
        n = -(pos[None, :] - pos[:, None])
        nb = 16
        ret = (n < 0).long() * nb
        n = n.abs()
        max_exact = nb // 2
        large = max_exact + (torch.log(n.float() / max_exact) / math.log(32 / max_exact) * (nb - max_exact)).long()
        large = torch.min(large, torch.full_like(large, nb - 1))
        return ret + torch.where(n < max_exact, n, large)

    def rotate(u):  # rotary_embedding_torch rotate_queries_or_keys: positions 0..L-1, first 32 channels
        L = u.shape[-2]
        freqs = 1.0 / 10000 ** (torch.arange(0, 32, 2).float() / 32)
        angles = torch.repeat_interleave(torch.arange(L).float()[:, None] * freqs, 2, dim=-1)  # (L, 32)
        r, rest = u[..., :32], u[..., 32:]
        pairs = r.reshape(*r.shape[:-1], 16, 2)
        turned = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(r.shape)
        return torch.cat([r * angles.cos() + turned * angles.sin(), rest], -1)

    def attention(p, h, ctx=None, temporal=False):
        ctx = h if ctx is None else ctx
        q, k, v = (linear(p + n, s).reshape(s.shape[0], s.shape[1], heads, -1).transpose(1, 2)
                   for n, s in ((".to_q", h), (".to_k", ctx), (".to_v", ctx)))
        q = q * q.shape[-1] ** -0.5
        if temporal:
            q, k = rotate(q), rotate(k)
        scores = q @ k.transpose(-1, -2)
        if temporal:
            scores = scores + W[p + ".time_rel_pos_bias.relative_attention_bias.weight"][buckets(h.shape[1])].permute(
                2, 0, 1)
        scores = scores - scores.amax(-1, keepdim=True)
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(h.shape)
        return linear(p + ".to_out.0", out)

    def transformer(p, h):
        c, hh, ww = h.shape[1], h.shape[3], h.shape[4]
        res = frames_2d(h)
        z = F.group_norm(res, groups, W[p + ".norm.weight"], W[p + ".norm.bias"], 1e-6)
        z = F.conv2d(z, W[p + ".proj_in.weight"], W[p + ".proj_in.bias"]).permute(0, 2, 3, 1).reshape(b * f, -1, c)
        ctx = text.repeat_interleave(f, 0)  # repeat(encoder_hidden_states, 'b n c -> (b f) n c')
        q = p + ".transformer_blocks.0"
        z = attention(q + ".attn1", layer_norm(q + ".norm1", z)) + z
        z = attention(q + ".attn2", layer_norm(q + ".norm2", z), ctx) + z
        z = z.reshape(b, f, -1, c).permute(0, 2, 1, 3).reshape(-1, f, c)  # (b f) d c -> (b d) f c
        z = attention(q + ".attn_temp", layer_norm(q + ".norm_temp", z), temporal=True) + z
        z = z.reshape(b, -1, f, c).permute(0, 2, 1, 3).reshape(b * f, -1, c)
        hidden, gate = linear(q + ".ff.net.0.proj", layer_norm(q + ".norm3", z)).chunk(2, -1)
        z = linear(q + ".ff.net.2", hidden * F.gelu(gate)) + z
        z = F.conv2d(z.reshape(b * f, hh, ww, c).permute(0, 3, 1, 2), W[p + ".proj_out.weight"], W[p + ".proj_out.bias"])
        return frames_5d(z + res)

    c0 = cfg.block_out_channels[0]
    half = c0 // 2
    arg = t.float()[:, None] * torch.exp(-math.log(10000) * torch.arange(half).float() / half)[None]
    emb = torch.cat([arg.cos(), arg.sin()], -1)  # Timesteps(c0, flip_sin_to_cos=True, 0)
    emb = linear("time_embedding.linear_2", F.silu(linear("time_embedding.linear_1", emb)))
    h = conv("conv_in", x)
    skips = [h]
    levels = len(cfg.block_out_channels)
    for i in range(levels):
        for j in range(cfg.layers_per_block):
            h = resnet(f"down_blocks.{i}.resnets.{j}", h, emb)
            if f"down_blocks.{i}.attentions.{j}.norm.weight" in W:
                h = transformer(f"down_blocks.{i}.attentions.{j}", h)
            skips.append(h)
        if i < levels - 1:
            h = conv(f"down_blocks.{i}.downsamplers.0.conv", h, stride=2)
            skips.append(h)
    h = resnet("mid_block.resnets.0", h, emb)
    h = transformer("mid_block.attentions.0", h)
    h = resnet("mid_block.resnets.1", h, emb)
    for i in range(levels):
        for j in range(cfg.layers_per_block + 1):
            h = resnet(f"up_blocks.{i}.resnets.{j}", torch.cat([h, skips.pop()], 1), emb)
            if f"up_blocks.{i}.attentions.{j}.norm.weight" in W:
                h = transformer(f"up_blocks.{i}.attentions.{j}", h)
        if i < levels - 1:
            size = [f, *skips[-1].shape[-2:]] if any(s % 2 ** (levels - 1) for s in x.shape[-2:]) else None
            h = F.interpolate(h, size=size, scale_factor=None if size else [1.0, 2.0, 2.0], mode="nearest")
            h = conv(f"up_blocks.{i}.upsamplers.0.conv", h)
    h = F.silu(F.group_norm(h, groups, W["conv_norm_out.weight"], W["conv_norm_out.bias"], 1e-5))
    return conv("conv_out", h)


def random_release_state(cfg: LaVieUNetConfig, seed: int = 0) -> dict:
    """Our UNet's keys (+ the rotary freqs the release carries) with random weights of a trained model's spread."""
    torch.manual_seed(seed)
    state = checkpoints.release_state(LaVieUNet3DModel(cfg))
    return {k: v if k.endswith(checkpoints.ROTARY_KEY) else v + 0.05 * torch.randn_like(v) for k, v in state.items()}


@pytest.mark.parametrize("frames,size", [(3, (8, 8)), (12, (4, 6)), (2, (5, 7))],
                         ids=["short", "far-buckets", "odd-size"])
def test_unet_matches_the_release_forward(frames, size):
    """12 frames reach the log-spaced relative buckets (|i - j| >= 8); 5x7 latents make the upsamplers take the skips'
    sizes; the rotary freqs the release carries are accepted and checked."""
    cfg = LaVieUNetConfig(**TINY_UNET)
    state = random_release_state(cfg)
    unet = LaVieUNet3DModel.from_state_dict(state, cfg)
    gen = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 4, frames, *size, generator=gen), torch.randn(2, 7, 32, generator=gen)
    t = torch.tensor([981, 20])
    with torch.no_grad():
        ours, ref = unet(x, t, text), release_unet(state, cfg, x, t, text)
    assert ref.abs().max() > 0.5  # a real signal
    assert (ours - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_one_frame_without_temporal_attention_is_sd_unet_of_diffusers():
    """The UNet made 3D from SD's: with its temporal attentions' outputs zeroed, one frame through it is diffusers'
    UNet2DConditionModel (SD-1.4's class) on the same weights, the release's from_pretrained_2d mapping."""
    from diffusers import UNet2DConditionModel

    cfg = LaVieUNetConfig(**TINY_UNET)
    torch.manual_seed(0)
    sd = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=cfg.block_out_channels,
                              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), layers_per_block=1,
                              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
                              cross_attention_dim=32).eval()
    ours = LaVieUNet3DModel(cfg).eval()
    missing, unexpected = ours.load_state_dict(sd.state_dict(), strict=False)
    assert not unexpected and missing and all("_temp" in k for k in missing)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "attn_temp.to_out" in name:
                p.zero_()
        x, text = torch.randn(2, 4, 6, 6), torch.randn(2, 7, 32)
        ref = sd(x, torch.tensor([700, 10]), text).sample
        out = ours(x[:, :, None], torch.tensor([700, 10]), text)[:, :, 0]
    assert (out - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("method", ["ddpm", "ddim", "eulerdiscrete"])
def test_generate_matches_the_release_sampling_loop(method, monkeypatch):
    """pipeline_videogen.py's loop written out: CLIP states of the prompt and "" padded to 77, [uncond; cond] in one
    UNet batch (scale_model_input first), guidance, sample.py's scheduler (SD-1.4's config, sample.yaml's betas;
    DDPM with diffusers 0.16.0's timesteps) stepping with the global generator the seed sets, as the first noise,
    latents / 0.18215 into the VAE."""
    import diffusers

    tiny = LaViePipeline.from_config(LaVieConfig(preset="tiny", progress_bar=False, sample_method=method))
    captured = {}
    decode = tiny.vae.decode

    def capture(z):
        captured["z"] = z
        return decode(z)

    monkeypatch.setattr(tiny.vae, "decode", capture)
    steps, scale, frames = 5, 7.5, 3
    out = tiny.generate(PROMPT, seed=3, num_inference_steps=steps, guidance_scale=scale, num_frames=frames)
    torch.manual_seed(3)  # sample.py: torch.manual_seed(args.seed); the generator is None from there on
    with torch.no_grad():
        ids = [tiny.tokenizer([p], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
               for p in ("", PROMPT)]
        embeds = torch.cat([tiny.text_encoder(i)[0] for i in ids])
        sd14 = dict(_class_name="PNDMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                    beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True,
                    steps_offset=1, trained_betas=None)  # CompVis/stable-diffusion-v1-4 scheduler/
        cls = getattr(diffusers, {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler",
                                  "eulerdiscrete": "EulerDiscreteScheduler"}[method])
        scheduler = cls.from_config(sd14, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
        scheduler.set_timesteps(steps)
        if method == "ddpm":  # diffusers 0.16.0's DDPMScheduler.set_timesteps (no steps_offset)
            scheduler.timesteps = torch.from_numpy((np.arange(0, steps) * (1000 // steps))[::-1].copy())
        latents = torch.randn(1, 4, frames, 4, 4) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            noise = tiny.transformer(scheduler.scale_model_input(torch.cat([latents] * 2), t), t, embeds)
            uncond, cond = noise.chunk(2)
            latents = scheduler.step(uncond + scale * (cond - uncond), t, latents).prev_sample
    assert (out.latents - latents).abs().max() < 1e-5 * max(1.0, latents.abs().max().item())
    expected = latents.transpose(1, 2).reshape(frames, 4, 4, 4) / 0.18215
    assert torch.allclose(captured["z"], expected, atol=1e-5)
    assert out.video.shape == (1, frames, 32, 32, 3) and out.stats["steps"] == steps


def test_release_layout_saves_and_loads_back_strictly(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path))
    state = torch.load(tmp_path / "lavie_base.pt", weights_only=True)
    assert sum(k.endswith("attn_temp.rotary_emb.freqs") for k in state) == 4  # one per temporal attention, as the release carries them
    loaded = LaViePipeline.from_config(LaVieConfig(model_path=str(tmp_path), progress_bar=False))
    assert loaded.transformer.config == tiny.transformer.config
    run = dict(seed=1, num_inference_steps=3, num_frames=2, height=32, width=32)
    assert torch.equal(loaded.generate(PROMPT, **run).latents, tiny.generate(PROMPT, **run).latents)
    cfg = tiny.transformer.config
    broken = dict(state)
    broken.pop("mid_block.resnets.1.conv2.bias")
    broken["mid_block.extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "lavie_base.pt")
    with pytest.raises(ValueError, match=r"missing keys \(1\): mid_block.resnets.1.conv2.bias[\s\S]*unexpected keys "
                                         r"\(1\): mid_block.extra.weight"):
        checkpoints.load_unet(str(tmp_path / "lavie_base.pt"), cfg)
    state[next(k for k in state if k.endswith("rotary_emb.freqs"))] *= 2
    torch.save({"ema": state}, tmp_path / "lavie_base.pt")  # a training checkpoint: its "ema" weights are read
    with pytest.raises(ValueError, match="rotary frequencies"):
        checkpoints.load_unet(str(tmp_path / "lavie_base.pt"), cfg)
    with pytest.raises(FileNotFoundError, match="no lavie_base.pt"):
        checkpoints.release_file(str(tmp_path / "missing"), "lavie_base.pt")


def test_published_defaults_stages_and_parallel_are_checked():
    config = LaVieConfig()
    assert (config.num_frames, config.height, config.width, config.num_inference_steps, config.guidance_scale,
            config.fps) == (16, 320, 512, 50, 7.5, 8)
    assert config.stages == ("base",) and config.model_path == "YaohuiW/LaVie"
    assert LaVieConfig(preset="tiny", stages="base").stages == ("base",)
    with pytest.raises(ValueError, match="unknown stage.*'upscale'"):
        LaVieConfig(preset="tiny", stages=("base", "upscale"))
    with pytest.raises(ValueError, match="not a cascade"):
        LaVieConfig(preset="tiny", stages=("base", "vsr"))
    with pytest.raises(ValueError, match="height=36 must be divisible by 8"):
        LaVieConfig(preset="tiny", height=36)
    with pytest.raises(ValueError, match="no sequence parallelism"):
        LaVieConfig(preset="tiny", num_gpus=2).check_launch(2, spawning=False)
    LaVieConfig(preset="tiny", num_gpus=2, cfg_parallel=True).check_launch(2, spawning=False)


class DoubleFrames:
    """A stand-in later stage: repeats each frame, recording what it was given."""

    seen: list = []

    @classmethod
    def from_config(cls, config, base):
        return cls()

    def refine(self, out, run):
        self.seen.append((run.prompts, run.values["num_frames"]))
        out.video = out.video.repeat_interleave(2, dim=1)
        return out


def test_a_later_stage_plugs_in_by_one_line(monkeypatch):
    """The cascade's hook: a stage registered in STAGE_PIPELINES gets the base run's output and values."""
    from videosys.models.lavie import pipeline as lavie

    monkeypatch.delitem(lavie.STAGE_PIPELINES, "interpolation")
    with pytest.raises(ValueError, match="interpolation stage is not available"):
        LaVieConfig(preset="tiny", stages="base,interpolation")
    monkeypatch.setitem(lavie.STAGE_PIPELINES, "interpolation", f"{__name__}:DoubleFrames")
    pipe = LaViePipeline.from_config(LaVieConfig(preset="tiny", progress_bar=False, stages="base,interpolation"))
    out = pipe.generate(PROMPT, seed=0, num_inference_steps=2, num_frames=2)
    assert out.video.shape[1] == 4 and DoubleFrames.seen == [([PROMPT], 2)]


def test_cli_and_server_take_the_family(tmp_path, capsys):
    from videosys.cli import main
    from videosys.serve.app import ApiError, validate_request
    from videosys.utils.video import read_video

    output = tmp_path / "lavie.mp4"
    assert main(["generate", "--model", "lavie", "--preset", "tiny", "--prompt", PROMPT, "--steps", "3", "--cache",
                 "deepcache", "--no-progress", "--output", str(output)]) == 0
    frames, fps = read_video(str(output))
    assert frames.shape == (4, 32, 32, 3) and fps == 8
    with pytest.raises(ApiError) as err:  # the config alone: no pipeline, no weights
        validate_request(LaVieConfig(preset="tiny"), {"width": 36})
    assert err.value.param == "width"
