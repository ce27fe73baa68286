"""LaVie's video super-resolution stage: the x4 upscaler made 3D, sampled as the release samples it.

The release's loop (vsr/sample.py with vsr/models/pipeline_stable_diffusion_upscale_video_3d.py):
- the low-res video (B, 3, T, H, W) in [-1, 1] is cut into chunks of 8 frames, each upscaled by its own run of the
  pipeline with one generator kept across the chunks;
- per chunk: noise (drawn first) is added to the low-res frames by the low-res DDPM scheduler at `noise_level`,
  then the first latents (B, 4, t, H, W) are drawn (the latents have the low-res size: the VAE upsamples x4);
- each step's UNet input is the latents with the noised low-res frames beside them on the channels, the noise
  level as a class label, and CFG with the negative prompt "blur, worst quality";
- diffusers' DDIMScheduler (eta 0) with the x4 upscaler's scheduler config, beta_schedule set to "linear";
- each frame decoded by the x4 upscaler's VAE (latents / scaling_factor), clamped to [-1, 1].

Here the loop is the shared denoising loop (VideoSysPipeline.denoise), so the caches' hook points and CFG
parallelism act on it; the stage is its own small pipeline whose "transformer" is the VSR UNet.
"""

import json
import os
from dataclasses import dataclass

import torch

from videosys.core.pipeline import VideoSysPipeline
from videosys.utils.files import atomic_path
from videosys.models.lavie import checkpoints
from videosys.models.lavie.stages import CascadeStage, summed
from videosys.models.lavie.vsr_unet import ROTARY_DIM, LaVieVSRUNet, LaVieVSRUNetConfig, config_from_upscaler

UPSCALER_FOLDER = "stable-diffusion-x4-upscaler"  # the release's pretrained_models/ layout
UPSCALER_HUB_ID = "stabilityai/stable-diffusion-x4-upscaler"  # README: the x4 upscaler the VSR model starts from


@dataclass(frozen=True)
class VSRSettings:
    """The stage's sampling settings; defaults are the release's published ones."""

    num_inference_steps: int = 50  # vsr/configs/sample.yaml: inference_steps
    guidance_scale: float = 5.0  # vsr/configs/sample.yaml: guidance_scale
    noise_level: int = 50  # vsr/configs/sample.yaml: noise_level
    negative_prompt: str = "blur, worst quality"  # vsr/sample.py
    chunk_frames: int = 8  # vsr/sample.py: short_seq (frames per pipeline run)

    def check(self, max_noise_level: int) -> None:
        if not 0 <= self.noise_level <= max_noise_level:
            raise ValueError(f"vsr noise_level must be in [0, {max_noise_level}] (the UNet's noise-level embedding), "
                             f"got {self.noise_level}")
        if self.chunk_frames < 1 or self.num_inference_steps < 1:
            raise ValueError("vsr chunk_frames and num_inference_steps must be >= 1")


# the x4 upscaler's scheduler configs (stabilityai/stable-diffusion-x4-upscaler scheduler/ and low_res_scheduler/
# scheduler_config.json) for the tiny preset; an official folder's own files are read instead. Only add_noise of the
# low-res one is used (its clip_sample and variance_type never act)
UPSCALER_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
                          prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
UPSCALER_LOW_RES_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                  beta_schedule="scaled_linear", clip_sample=True, prediction_type="epsilon",
                                  variance_type="fixed_small")
MAX_TEXT_LENGTH = 77  # the CLIP tokenizer's model_max_length


def vsr_scheduler(config: dict):
    """diffusers' DDIMScheduler from the upscaler's config with beta_schedule "linear", as vsr/sample.py sets it."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({**config, "beta_schedule": "linear"})


def encode_clip(tokenizer, encoder, prompts: list[str], negative_prompt: str, do_cfg: bool, device) -> torch.Tensor:
    """CLIP's last hidden states over 77 padded tokens (the upscaler's _encode_prompt, the interpolation stage's
    FrozenCLIPEmbedder), laid out [uncond; cond] with CFG."""
    texts = ([negative_prompt] * len(prompts) if do_cfg else []) + prompts
    ids = tokenizer(texts, padding="max_length", max_length=MAX_TEXT_LENGTH, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return encoder(ids)[0]


# ---- tiny components (random weights, offline) -----------------------------------------------------------
# one head of 32 channels (the rotary table's 32) per level: the VSR UNet runs at the low-res pixels' size, so the tiny
# cascade's cost is mostly here (tests/test_lavie_vsr.py checks a 2-head variant against the release)
TINY_UNET = LaVieVSRUNetConfig(block_out_channels=(32, 32), down_block_types=("DownBlock3D", "CrossAttnDownBlock3D"),
                               up_block_types=("CrossAttnUpBlock3D", "UpBlock3D"), only_cross_attention=(True, False),
                               layers_per_block=1, attention_head_dim=1, cross_attention_dim=32,
                               down_temporal_idx=(0, 1), up_temporal_idx=(0, 1))


def tiny_vae():
    """The x4 upscaler's VAE layout (3 levels: x4, 4 latent channels, scaling_factor 0.08333), narrow."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=1,
                         norm_num_groups=32, scaling_factor=0.08333)


def tiny_clip_text(vocab_size: int, hidden: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=MAX_TEXT_LENGTH,
                            pad_token_id=0, bos_token_id=0, eos_token_id=1)  # the tiny T5-style tokenizer's ids
    return CLIPTextModel(config).eval()


def tiny_vsr_components(seed: int = 0, text_encoder=None, tokenizer=None) -> dict:
    """Random parts at small widths; the text stack given (the base's tiny CLIP, 32 wide) or a fresh one."""
    from diffusers import DDPMScheduler

    from videosys.utils.text import build_tiny_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if tokenizer is None:
            tokenizer = build_tiny_tokenizer(MAX_TEXT_LENGTH)
            text_encoder = tiny_clip_text(len(tokenizer), TINY_UNET.cross_attention_dim)
        return dict(unet=LaVieVSRUNet(TINY_UNET).eval(), vae=tiny_vae().eval(), text_encoder=text_encoder,
                    tokenizer=tokenizer, scheduler=vsr_scheduler(UPSCALER_SCHEDULER),
                    low_res_scheduler=DDPMScheduler.from_config(UPSCALER_LOW_RES_SCHEDULER))


def upscaler_path(model_path: str) -> str:
    """The x4 upscaler's folder: model_path's stable-diffusion-x4-upscaler/ (the release's layout), else the hub's."""
    local = os.path.join(model_path, UPSCALER_FOLDER)
    return local if os.path.isdir(local) else UPSCALER_HUB_ID


def official_vsr_components(model_path: str, dtype: torch.dtype) -> dict:
    """The release's layout: lavie_vsr.pt (strict, its keys) and the x4 upscaler's parts in diffusers layout; the
    UNet's 2D fields from the upscaler's unet/config.json where there is one locally, else the release's."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from videosys.models.modules.pretrained import load_pretrained
    from videosys.utils.hub import resolve_dir

    upscaler = upscaler_path(model_path)
    file = checkpoints.release_file(model_path, checkpoints.RELEASE_FILES["vsr"])
    state = checkpoints.read_release_state(file)
    checkpoints.check_rotary(state, ROTARY_DIM, file)  # the frequencies it carries must be the ones rope_1d computes
    config_file = os.path.join(upscaler, "unet", "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            unet_config = config_from_upscaler(json.load(f))
    else:
        unet_config = LaVieVSRUNetConfig()
    unet = LaVieVSRUNet.from_state_dict(state, unet_config, dtype, source=file)
    return dict(unet=unet, vae=load_pretrained(AutoencoderKL, resolve_dir(upscaler, "vae")),
                text_encoder=load_pretrained(CLIPTextModel, resolve_dir(upscaler, "text_encoder")),
                tokenizer=load_pretrained(CLIPTokenizer, resolve_dir(upscaler, "tokenizer")),
                scheduler=vsr_scheduler(dict(DDIMScheduler.load_config(resolve_dir(upscaler, "scheduler")))),
                low_res_scheduler=load_pretrained(DDPMScheduler, resolve_dir(upscaler, "low_res_scheduler")))


def release_vsr_state(unet: LaVieVSRUNet) -> dict[str, torch.Tensor]:
    """Our VSR UNet's state dict as lavie_vsr.pt holds it: plus rotary_embedding_torch's frequencies, under the UNet
    and every temporal attention that shares them."""
    state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    freqs = checkpoints.rotary_frequencies(ROTARY_DIM)
    state["temporal_rotary_emb.freqs"] = freqs.clone()
    for name, _ in unet.named_modules():
        if name.endswith("attn_temporal"):
            state[f"{name}.rotary_emb.freqs"] = freqs.clone()
    return state


TINY_SETTINGS = VSRSettings(num_inference_steps=6)  # the tiny preset: the published sampler, fewer steps


class LaVieVSRStage(CascadeStage, VideoSysPipeline):
    """upscale(video, prompts) -> the video x4 (each side); `transformer` is the VSR UNet (the caches' hook points)."""

    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler")
    progress_name = "LaVie VSR"
    name = "vsr"

    def __init__(self, config, unet, vae, text_encoder, tokenizer, scheduler, low_res_scheduler):
        super().__init__(config, unet, vae, text_encoder, tokenizer, scheduler)
        self.low_res_scheduler = low_res_scheduler
        self.chunk_stats: list[dict] = []  # the caches' counts of each chunk of the last run

    @property
    def unet(self):
        return self.transformer

    @classmethod
    def from_config(cls, config, base) -> "LaVieVSRStage":
        """The x4 upscaler's parts from model_path's stable-diffusion-x4-upscaler/ and lavie_vsr.pt (the release's
        pretrained_models layout); the tiny preset's are random, its text stack the base's tiny one."""
        if config.model_path is None:
            parts = tiny_vsr_components(text_encoder=base.text_encoder, tokenizer=base.tokenizer)
        else:
            parts = official_vsr_components(config.model_path, config.torch_dtype())
        stage = cls.build(config, parts)
        stage.attach(base)
        return stage

    def run_stage(self, video: torch.Tensor, run) -> torch.Tensor:
        settings = TINY_SETTINGS if self.config.preset == "tiny" else VSRSettings()
        self.stage_steps = 0
        return self.upscale_latents(video, run.prompts, run.seed, settings)

    def stage_cache_stats(self) -> dict:
        return summed(self.chunk_stats)

    def save_release(self, folder: str) -> None:
        """lavie_vsr.pt and stable-diffusion-x4-upscaler/ (vae/, text_encoder/, tokenizer/, scheduler/ (its beta
        schedule already the "linear" LaVie samples with), low_res_scheduler/, unet/config.json: the 2D UNet's
        fields), as the release's pretrained_models/ holds them; LaVieConfig(model_path=folder, stages=...) loads
        them back."""
        upscaler = os.path.join(folder, UPSCALER_FOLDER)
        for name in ("vae", "text_encoder", "tokenizer", "low_res_scheduler"):
            getattr(self, name).save_pretrained(os.path.join(upscaler, name))
        self.scheduler.save_pretrained(os.path.join(upscaler, "scheduler"))
        with atomic_path(os.path.join(upscaler, "unet", "config.json"), ".json") as tmp, open(tmp, "w") as f:
            json.dump({"_class_name": "UNet2DConditionModel", **self.unet.config.unet_2d_kwargs()}, f, indent=2)
        with atomic_path(os.path.join(folder, checkpoints.RELEASE_FILES["vsr"]), ".pt") as tmp:
            torch.save(release_vsr_state(self.unet), tmp)

    @classmethod
    def build(cls, config, components: dict):
        device, dtype = config.torch_device(), config.torch_dtype()
        parts = {k: (v.to(device=device, dtype=dtype) if isinstance(v, torch.nn.Module) and k != "vae" else v)
                 for k, v in components.items()}
        parts["vae"] = components["vae"].to(device).float()  # the release decodes in fp32
        return cls(config, **parts)

    def encode_text(self, prompts: list[str], negative_prompt: str, do_cfg: bool) -> torch.Tensor:
        text = encode_clip(self.tokenizer, self.text_encoder, prompts, negative_prompt, do_cfg, self.device)
        return text.to(self.dtype)

    def upscale(self, video: torch.Tensor, prompts: list[str], seed: int, settings: VSRSettings) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 -> (B, T, 4H, 4W, 3) uint8."""
        latents = self.upscale_latents(video, prompts, seed, settings)
        with self.stage("decode"):
            return self.decode(latents)

    def upscale_latents(self, video: torch.Tensor, prompts: list[str], seed: int, settings: VSRSettings):
        """(B, T, H, W, 3) uint8 -> the clean latents (B, 4, T, H, W), chunk by chunk as the release."""
        settings.check(self.unet.config.max_noise_level)
        do_cfg = settings.guidance_scale > 1.0
        low_res = (video.permute(0, 4, 1, 2, 3).float() / 255 - 0.5) * 2  # (B, 3, T, H, W) in [-1, 1]
        with self.stage("text"):
            text = self.encode_text(prompts, settings.negative_prompt, do_cfg)
        generator = torch.Generator("cpu").manual_seed(seed)  # one generator across the chunks, as the release
        chunks, self.chunk_stats = [], []
        with self.stage("denoise"):
            for start in range(0, low_res.shape[2], settings.chunk_frames):
                chunks.append(self.sample_chunk(low_res[:, :, start:start + settings.chunk_frames], text, generator,
                                                settings, do_cfg))
                self.check_finite(chunks[-1])  # each chunk's own loop watched its steps
                self.stage_steps += self.denoised_steps
                self.chunk_stats.append(self.transformer.cache_stats())  # each chunk's loop starts the caches afresh
        return torch.cat(chunks, 2)

    def sample_chunk(self, low_res: torch.Tensor, text: torch.Tensor, generator, settings: VSRSettings,
                     do_cfg: bool) -> torch.Tensor:
        """One release pipeline call: the noised low-res frames and the clean latents (B, 4, t, H, W)."""
        b = low_res.shape[0]
        noise = torch.randn(low_res.shape, generator=generator)
        level = torch.tensor([settings.noise_level])
        low_res = self.low_res_scheduler.add_noise(low_res, noise, level).to(self.device, self.dtype)
        latents = torch.randn((b, self.vae.config.latent_channels, *low_res.shape[2:]), generator=generator)
        latents = (latents * self.scheduler.init_noise_sigma).to(self.device, self.dtype)
        rows = 2 * b if do_cfg else b
        conditioning = (text, torch.cat([low_res] * (rows // b)), level.to(self.device).expand(rows))
        self.scheduler.set_timesteps(settings.num_inference_steps)
        return self.denoise(latents, self.scheduler.timesteps, self.predict_noise, self.scheduler_step, conditioning,
                            do_cfg, settings.guidance_scale, self.progress_name)

    def predict_noise(self, model_in, i, t, text, low_res, level):
        t = torch.as_tensor(t, device=self.device)
        return self.unet(self.scheduler.scale_model_input(model_in, t), t, low_res, text, level)

    def scheduler_step(self, pred, i, t, latents):
        return self.scheduler.step(pred, t, latents, return_dict=False)[0]  # eta 0, as the release

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, T, H, W) -> (B, T, 4H, 4W, 3) uint8, frame by frame in fp32."""
        b, frames = latents.shape[0], latents.shape[2]
        flat = latents.transpose(1, 2).flatten(0, 1).float() / self.vae.config.scaling_factor  # (B T, 4, H, W)
        pixels = torch.cat([self.vae.decode(x).sample for x in flat.split(4)]).clamp(-1, 1)  # 4 at a time (release)
        return self.to_frames(pixels.unflatten(0, (b, frames)).transpose(1, 2))
