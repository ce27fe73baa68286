"""LaVie's temporal interpolation stage: 16 base frames -> 61, as the release samples it.

The model (interpolation/models/unet.py, from_pretrained_2d with use_concat / copy_no_mask) is the base UNet's
family (SD-1.4 made 3D) with three differences, so it is the base class with a small subclass here:
- 8 input channels: the noisy latents and the "copied" latents of the base frames, concatenated;
- `use_first_frame=True`: each block's attn1 is sparse-causal, every frame's tokens attending to the tokens of
  frame 0 and of the previous frame (attention.py SparseCausalAttention);
- its temporal attention has no positions (no rotary table, no relative bias: plain multi-head attention) and
  comes after the block's MLP (attention.py BasicTransformerBlock), where the base block has it before.

The sampler (interpolation/sample.py auto_inpainting_copy_no_mask, configs/sample.yaml: copy_no_mask=True,
use_concat=True, so the mask_type "tsr" mask is never built):
- the 16 frames are encoded by SD-1.4's VAE (a posterior sample, x 0.18215); frame k sits at position 4k of 61
  (the release reads 61 frames spread evenly over the 16 and keeps every 4th latent), each is repeated 4 times
  and the 64 cut to 61 ([1:-2]): the "copied" video, concatenated to the latents at every step;
- ADM's DDIM (eta 0) over the linear beta schedule (1e-4 .. 0.02, 1000 steps) respaced to 50 steps, the model
  seeing the original timesteps; CFG 4.0 on the epsilon, with prompt + ", 4k." and the literal negative "None";
- the 61 latents decoded by the VAE.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from videosys.cache import module_call
from videosys.core.pipeline import VideoSysPipeline
from videosys.models.lavie import checkpoints
from videosys.models.lavie.stages import CascadeStage
from videosys.models.lavie.unet import LaVieUNet3DModel, LaVieUNetConfig, TransformerBlock
from videosys.models.lavie.vsr import encode_clip
from videosys.models.modules.attention import Attention

FRAME_STRIDE = 4  # interpolation/sample.py: lr_indice = range(0, 62, 4), repeat_interleave(4), [1:-2]
SD_LATENT_SCALE = 0.18215  # interpolation/sample.py: .mul_(0.18215), / 0.18215


@dataclass(frozen=True)
class InterpolationSettings:
    """The stage's sampling settings; defaults are the release's published ones (interpolation/configs/sample.yaml)."""

    num_inference_steps: int = 50  # num_sampling_steps
    guidance_scale: float = 4.0  # cfg_scale
    additional_prompt: str = ", 4k."  # additional_prompt
    negative_prompt: str = "None"  # negative_prompt: the YAML's string "None", encoded as text


def output_frames(frames: int) -> int:
    """61 for the base's 16: every frame but the last followed by 3 new ones, then [1:-2] of the repeats."""
    return FRAME_STRIDE * frames - 3


def interpolation_unet_config(base: LaVieUNetConfig | None = None) -> LaVieUNetConfig:
    """The interpolation UNet's config from the base (SD-1.4) one: 8 input channels, no temporal positions."""
    values = dict(vars(base or LaVieUNetConfig()))
    return LaVieUNetConfig(**{**values, "in_channels": 8, "rotary_dim": None})


class SparseCausalBlock(TransformerBlock):
    """The interpolation UNet's transformer block (interpolation/models/attention.py BasicTransformerBlock with
    use_first_frame=True): the base block's layers and keys (less time_rel_pos_bias), but attn1 over frame 0's and
    the previous frame's tokens, a temporal attention without positions, and the temporal attention after the MLP
    (the base block has it before)."""

    def __init__(self, dim: int, heads: int, cross_dim: int, config: LaVieUNetConfig, index: int):
        super().__init__(dim, heads, cross_dim, config, index)
        self.attn_temp = Attention(dim, heads, dim // heads)

    def sparse_causal(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """SparseCausalAttention: x (B F, N, C), each frame's queries over frame 0's and frame i-1's keys / values."""
        attn = self.attn1
        q, k, v = (attn.split_heads(t) for t in attn.project_qkv(x))  # (B F, heads, N, d)
        previous = torch.arange(frames, device=x.device).sub(1).clamp(min=0)  # frame i-1 (frame 0: itself)
        first = torch.zeros_like(previous)

        def sparse(t):  # (B F, h, N, d) -> (B F, h, 2N, d): frame 0's tokens then frame i-1's
            t = t.unflatten(0, (-1, frames))
            return torch.cat([t[:, first], t[:, previous]], dim=3).flatten(0, 1)

        out = F.scaled_dot_product_attention(q, sparse(k), sparse(v))
        return attn.to_out[0](out.transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, text: torch.Tensor, frames: int, hooks) -> torch.Tensor:
        """x (B F, N, C) one frame's tokens per row; text (B, S, C_text). The hook sites are the base block's."""
        i = self.index
        bf, n, c = x.shape
        b = bf // frames
        x = x + module_call(hooks, "spatial", i, lambda: self.sparse_causal(self.norm1(x), frames), block="spatial")
        x = x + module_call(hooks, "cross", i, lambda: self.attn2(self.norm2(x).reshape(b, frames * n, c), text)
                            .reshape(bf, n, c), block="spatial")  # the same text for every frame of a sample
        x = x + module_call(hooks, "mlp", i, lambda: self.ff(self.norm3(x)), block="spatial")
        t = x.unflatten(0, (b, frames)).transpose(1, 2).reshape(b * n, frames, c)  # (B N, F, C)
        t = t + module_call(hooks, "temporal", i, lambda: self.attn_temp(self.norm_temp(t)), block="spatial")
        return t.unflatten(0, (b, n)).transpose(1, 2).reshape(bf, n, c)  # (B F, N, C)


class LaVieInterpolationUNet(LaVieUNet3DModel):
    """forward(sample (B, 8, F, h, w) = [noisy latents; copied latents], timestep, text) -> noise (B, 4, F, h, w)."""

    class_name = "LaVieInterpolationUNet"

    def __init__(self, config: LaVieUNetConfig):
        super().__init__(config)
        for level in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            for transformer in getattr(level, "attentions", ()):
                old = transformer.transformer_blocks[0]
                dim = old.norm1.normalized_shape[0]
                transformer.transformer_blocks[0] = SparseCausalBlock(dim, old.attn1.heads, config.cross_attention_dim,
                                                                      config, old.index)


# ---- ADM's DDIM (interpolation/diffusion: create_diffusion(str(steps)), ddim_sample_loop with eta 0) -------------
def respaced_steps(num_train: int, steps: int) -> list[int]:
    """respace.space_timesteps(num_train, str(steps)): one section, a fractional stride, each index rounded."""
    stride = 1 if steps <= 1 else (num_train - 1) / (steps - 1)
    out, cur = [], 0.0
    for _ in range(steps):
        out.append(round(cur))
        cur += stride
    return sorted(set(out))


class AdmDDIM:
    """The release's respaced linear-beta diffusion: `timesteps` the model sees (descending), `step` one DDIM update
    (eta 0) from an epsilon, its tables in float64 and each step's values taken to fp32 as _extract_into_tensor does."""

    def __init__(self, steps: int, num_train: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        betas = np.linspace(beta_start, beta_end, num_train, dtype=np.float64)  # get_named_beta_schedule("linear")
        alphas_cumprod = np.cumprod(1.0 - betas)
        used = respaced_steps(num_train, steps)
        respaced = 1 - alphas_cumprod[used] / np.append(1.0, alphas_cumprod[used][:-1])  # SpacedDiffusion's betas
        self.alphas_cumprod = np.cumprod(1.0 - respaced)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.timesteps = torch.tensor(used[::-1])  # the original timesteps, what the model sees (_WrappedModel)

    def step(self, eps: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        n = len(self.alphas_cumprod) - 1 - i  # the respaced index of step i

        def value(a):
            return torch.tensor(a[n], dtype=torch.float64).float()

        recip, recipm1 = value(np.sqrt(1.0 / self.alphas_cumprod)), value(np.sqrt(1.0 / self.alphas_cumprod - 1))
        x0 = recip * x - recipm1 * eps  # _predict_xstart_from_eps
        eps = (recip * x - x0) / recipm1  # _predict_eps_from_xstart
        prev = value(self.alphas_cumprod_prev)
        return x0 * torch.sqrt(prev) + torch.sqrt(1 - prev) * eps


TINY_SETTINGS = InterpolationSettings(num_inference_steps=6)  # the tiny preset: the published sampler, fewer steps


class LaVieInterpolationStage(CascadeStage, VideoSysPipeline):
    """interpolate(video, prompts) -> 4F - 3 frames; `transformer` is the interpolation UNet (the hook points)."""

    components = ("unet", "vae", "text_encoder", "tokenizer")
    progress_name = "LaVie interpolation"
    name = "interpolation"

    def __init__(self, config, unet, vae, text_encoder, tokenizer):
        super().__init__(config, unet, vae, text_encoder, tokenizer, None)
        self.diffusion: AdmDDIM | None = None

    @property
    def unet(self):
        return self.transformer

    @classmethod
    def from_config(cls, config, base) -> "LaVieInterpolationStage":
        """Beside the base pipeline, whose SD-1.4 VAE, text encoder and tokenizer it shares (interpolation/sample.py
        loads the same stable-diffusion-v1-4 parts); the UNet from lavie_interpolation.pt (strict, the release's
        keys), or random for the tiny preset."""
        unet_config = interpolation_unet_config(base.transformer.config)
        if config.model_path is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(1)
                unet = LaVieInterpolationUNet(unet_config).eval()
        else:
            file = checkpoints.release_file(config.model_path, checkpoints.RELEASE_FILES["interpolation"])
            unet = LaVieInterpolationUNet.from_state_dict(checkpoints.read_release_state(file), unet_config,
                                                          config.torch_dtype(), source=file)
        stage = cls(config, unet.to(config.torch_device(), config.torch_dtype()), base.vae, base.text_encoder,
                    base.tokenizer)
        stage.attach(base)
        return stage

    def save_release(self, folder: str) -> None:
        """lavie_interpolation.pt (a plain state dict, the release's keys); its SD-1.4 parts are the base's."""
        from videosys.utils.files import atomic_path

        with atomic_path(os.path.join(folder, checkpoints.RELEASE_FILES["interpolation"]), ".pt") as tmp:
            torch.save({k: v.detach().cpu() for k, v in self.unet.state_dict().items()}, tmp)

    def run_stage(self, video: torch.Tensor, run) -> torch.Tensor:
        settings = TINY_SETTINGS if self.config.preset == "tiny" else InterpolationSettings()
        latents = self.interpolate_latents(video, run.prompts, run.seed, settings)
        self.stage_steps = self.denoised_steps
        return latents

    def copied_latents(self, video: torch.Tensor, seed: int) -> torch.Tensor:
        """(B, F, H, W, 3) uint8 -> the copied latents (B, 4, 4F - 3, h, w): each frame's posterior sample at
        position 4k, repeated. The posterior noise is drawn for the release's 4F - 3 evenly spread frames (its first
        draw from the seed) and frame k takes row 4k, so the numbers are the release's on the same generator."""
        b, f = video.shape[:2]
        pixels = (video.permute(0, 1, 4, 2, 3).flatten(0, 1).float() / 255 - 0.5) * 2  # (B F, 3, H, W)
        posterior = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((b * output_frames(f), *posterior.mean.shape[1:]), generator=generator)
        noise = noise.unflatten(0, (b, -1))[:, ::FRAME_STRIDE].flatten(0, 1).to(posterior.mean)
        latents = (posterior.mean + posterior.std * noise) * SD_LATENT_SCALE
        latents = latents.unflatten(0, (b, f)).transpose(1, 2)  # (B, 4, F, h, w)
        return latents.repeat_interleave(FRAME_STRIDE, dim=2)[:, :, 1:-2].to(self.dtype)

    def interpolate_latents(self, video: torch.Tensor, prompts: list[str], seed: int,
                            settings: InterpolationSettings) -> torch.Tensor:
        do_cfg = settings.guidance_scale > 1.0
        with self.stage("text"):
            texts = [p + settings.additional_prompt for p in prompts]
            text = encode_clip(self.tokenizer, self.text_encoder, texts, settings.negative_prompt, do_cfg, self.device)
        with self.stage("denoise"):
            copied = self.copied_latents(video, seed)
            rows = copied.shape[0] * (2 if do_cfg else 1)
            z = torch.randn(copied.shape, generator=torch.Generator().manual_seed(seed)).to(self.device, self.dtype)
            self.diffusion = AdmDDIM(settings.num_inference_steps)
            latents = self.denoise(z, self.diffusion.timesteps, self.predict_noise, self.adm_step,
                                   (text.to(self.dtype), torch.cat([copied] * (rows // copied.shape[0]))), do_cfg,
                                   settings.guidance_scale, self.progress_name)
        self.check_finite(latents)
        return latents

    def interpolate(self, video: torch.Tensor, prompts: list[str], seed: int, settings: InterpolationSettings):
        """(B, F, H, W, 3) uint8 -> (B, 4F - 3, H, W, 3) uint8."""
        latents = self.interpolate_latents(video, prompts, seed, settings)
        with self.stage("decode"):
            return self.decode(latents)

    def predict_noise(self, model_in, i, t, text, copied):
        t = torch.as_tensor(t, device=self.device)
        return self.unet(torch.cat([model_in, copied], 1), t, text)[:, :4]  # forward_with_cfg guides 4 channels

    def adm_step(self, eps, i, t, latents):
        return self.diffusion.step(eps, i, latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, frames = latents.shape[0], latents.shape[2]
        flat = latents.transpose(1, 2).flatten(0, 1).to(self.vae.dtype) / SD_LATENT_SCALE
        pixels = torch.cat([self.vae.decode(x).sample for x in flat.split(8)])
        return self.to_frames(pixels.unflatten(0, (b, frames)).transpose(1, 2))
