"""CogVideoX text-to-video: CogVideoXConfig (published defaults, `tiny` / `tiny-5b` presets) and CogVideoXPipeline.

Components in the THUDM/CogVideoX-2b / -5b (diffusers) layout: transformer/, vae/
(AutoencoderKLCogVideoX: 4x temporal, 8x spatial compression), text_encoder/ + tokenizer/ (T5,
226 tokens), scheduler/ (CogVideoX DDIM; the DPM variant is built from the same config).
"""

import json
import math
import os
from dataclasses import dataclass

import torch

from videosys.core.config import BaseConfig, RequestError
from videosys.core.pipeline import VideoSysPipeline
from videosys.models.cogvideox.cache_settings import CACHE_SETTINGS
from videosys.models.cogvideox.transformer import CogVideoXTransformer3DModel, CogVideoXTransformerConfig
from videosys.utils import text as text_stack
from videosys.models.modules.pretrained import load_pretrained
from videosys.utils.hub import resolve_dir

TINY_TEXT_DIM = 32
SCHEDULERS = {"ddim": "CogVideoXDDIMScheduler", "dpm": "CogVideoXDPMScheduler"}


@dataclass
class CogVideoXConfig(BaseConfig):
    """CogVideoX generation config. `CogVideoXConfig()` is CogVideoX-2b (49 frames at 480x720, 50 DDIM
    steps, cfg 6, 8 fps); pass model_path="THUDM/CogVideoX-5b" for 5b. `preset="tiny"` (sin-cos
    positions, like 2b) and `preset="tiny-5b"` (3D RoPE, like 5b) are small random models for a CPU."""

    scheduler: str = "ddim"  # "ddim": CogVideoXDDIMScheduler; "dpm": CogVideoXDPMScheduler (the 5b demo's choice)
    use_dynamic_cfg: bool = False  # the guidance scale rises over the steps (the 5b demo turns it on with dpm)
    max_text_length: int = 226  # T5 tokens, as trained
    vae_tiling: bool = True  # decode in overlapping spatial tiles: 480x720 fits in far less memory
    vae_slicing: bool = True  # decode one video of a batch at a time

    model_name = "cogvideox"
    cache_settings = CACHE_SETTINGS  # cache_settings.py: the published settings of each cache method
    official_model_path = "THUDM/CogVideoX-2b"
    defaults = dict(num_frames=49, height=480, width=720, num_inference_steps=50, guidance_scale=6.0, fps=8)
    presets = {
        "tiny": dict(num_frames=9, height=64, width=96, num_inference_steps=50, guidance_scale=6.0, fps=8),
        "tiny-5b": dict(num_frames=9, height=64, width=96, num_inference_steps=50, guidance_scale=6.0, fps=8),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}")

    def check_request(self, values: dict) -> dict:
        """BaseConfig's checks, then the VAE's grids (read from a local checkpoint, else the release's:
        4x temporal, 8x spatial compression, patch size 2).

        num_frames must be 8k + 1 (1, 9, 17, ..., 49): the VAE keeps the first frame and compresses the
        rest 4x, so 4k + 1 frames make k + 1 latent frames; its decoder works on pairs of latent frames
        and gives back 4k + 1 frames only when k + 1 is odd (an even count decodes to 4 (k + 1) frames,
        not the number asked for). height / width: divisible by the VAE's 8x times the patch size.
        """
        values = super().check_request(values)
        temporal = self.vae_config_value("temporal_compression_ratio") or 4
        step = 2 * temporal
        if (values["num_frames"] - 1) % step:
            raise RequestError("num_frames", f"num_frames={values['num_frames']} must be {step}k + 1 (1, 9, 17, ..., "
                               f"49): the VAE compresses frames after the first {temporal}x and decodes an odd "
                               "number of latent frames only")
        patch = (tiny_transformer_config(False).patch_size if self.model_path is None
                 else self.transformer_config_value("patch_size") or 2)
        self.check_divisible(values, self.vae_downsampling(self.model_path) * patch, "VAE downsampling x patch size")
        return values

    def vae_config_value(self, key: str):
        """`key` of a local checkpoint's vae/config.json (None: the tiny presets, or a hub id)."""
        if self.model_path is None:
            return None
        return self.transformer_config_value(key, os.path.join(self.model_path, "vae"))

    def is_5b(self) -> bool:
        """5b-like (3D RoPE) or 2b-like (sin-cos): the preset, a local transformer config, or the hub id says."""
        if self.preset is not None and self.model_path is None:
            return self.preset == "tiny-5b"
        path = self.model_path or ""
        for candidate in (os.path.join(path, "transformer", "config.json"), os.path.join(path, "config.json")):
            if os.path.isfile(candidate):
                with open(candidate) as f:
                    return bool(json.load(f).get("use_rotary_positional_embeddings", False))
        return "5b" in path.lower()

    def torch_dtype(self) -> torch.dtype:
        """dtype="auto" on CUDA is the release's: fp16 for 2b, bf16 for 5b (THUDM's model cards and VideoSys;
        the 2b TeaCache coefficients were fitted in fp16). On CPU it stays fp32."""
        if self.dtype == "auto" and self.torch_device().type == "cuda":
            return torch.bfloat16 if self.is_5b() else torch.float16
        return super().torch_dtype()

    def sp_heads(self) -> int | None:
        """Ulysses shards the heads over the sp group."""
        if self.model_path is None:
            return tiny_transformer_config(self.preset == "tiny-5b").num_attention_heads
        return self.transformer_config_value("num_attention_heads")

    def cache_models(self) -> tuple[str, ...]:
        """2b and 5b have their own published TeaCache polynomials; PAB's defaults are CogVideoX's."""
        return ("cogvideox-5b" if self.is_5b() else "cogvideox-2b", "cogvideox")

    @property
    def pipeline_cls(self):
        return CogVideoXPipeline


def tiny_transformer_config(rotary: bool) -> CogVideoXTransformerConfig:
    # sample_* (latent units) is the tiny presets' 64x96 latent grid, as 60x90 is 480x720 for the real models
    return CogVideoXTransformerConfig(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=TINY_TEXT_DIM, num_layers=2, sample_height=8, sample_width=12, sample_frames=9,
        use_rotary_positional_embeddings=rotary)


def tiny_scheduler_config(rotary: bool) -> dict:
    """The THUDM scheduler config (v-prediction, zero-SNR trailing DDIM); snr_shift_scale 3.0 for 2b, 1.0 for 5b."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                timestep_spacing="trailing", rescale_betas_zero_snr=True, snr_shift_scale=1.0 if rotary else 3.0)


def tiny_components(rotary: bool = False, seed: int = 0):
    """Transformer, VAE and text stack of the tiny presets: CogVideoX's classes, small widths, random weights."""
    from diffusers import AutoencoderKLCogVideoX

    tokenizer = text_stack.build_tiny_tokenizer(CogVideoXConfig.max_text_length)
    text_encoder = text_stack.build_tiny_text_encoder(len(tokenizer), d_model=TINY_TEXT_DIM, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(tiny_transformer_config(rotary))
        vae = AutoencoderKLCogVideoX(block_out_channels=(4, 4, 8, 8), latent_channels=4, layers_per_block=1,
                                     norm_num_groups=2, temporal_compression_ratio=4)
    return transformer.eval(), vae.eval(), text_encoder, tokenizer


def build_scheduler(name: str, scheduler_config: dict):
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[name])
    return cls.from_config({k: v for k, v in scheduler_config.items() if k != "_class_name"})


def dynamic_guidance_scales(guidance_scale: float, timesteps: list[int], num_steps: int) -> list[float]:
    """CogVideoX's dynamic CFG, as published (THUDM demo / diffusers): 1 + w * (1 - cos(pi * ((n - t) / n)^5)) / 2.

    Computed on the host from the timestep values before the loop, so the loop never reads a device tensor.
    """
    return [1 + guidance_scale * (1 - math.cos(math.pi * ((num_steps - t) / num_steps) ** 5.0)) / 2 for t in timesteps]


class CogVideoXPipeline(VideoSysPipeline):
    pipeline_class_name = "CogVideoXPipeline"
    progress_name = "cogvideox"
    frame_dim = 1  # latents (B, F, C, h, w)

    @classmethod
    def from_config(cls, config: CogVideoXConfig, parts: dict | None = None) -> "CogVideoXPipeline":
        """`parts`: the components given (the planner's weightless full-size ones: `architecture`), else loaded."""
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler

        dtype = config.torch_dtype()
        if parts is not None:
            transformer, vae, text_encoder, tokenizer = (parts[k] for k in ("transformer", "vae", "text_encoder",
                                                                            "tokenizer"))
            scheduler_config = tiny_scheduler_config(config.is_5b())  # the releases' values
        elif config.model_path is None:  # tiny preset, random weights
            rotary = config.preset == "tiny-5b"
            transformer, vae, text_encoder, tokenizer = tiny_components(rotary)
            scheduler_config = tiny_scheduler_config(rotary)
        else:
            path = config.model_path
            transformer = CogVideoXTransformer3DModel.from_pretrained(path, "transformer", dtype=dtype)
            vae = load_pretrained(AutoencoderKLCogVideoX, resolve_dir(path, "vae"), torch_dtype=dtype)
            tokenizer, text_encoder = text_stack.load_text_stack(path, dtype, "cpu")
            scheduler_config = CogVideoXDDIMScheduler.load_config(resolve_dir(path, "scheduler"))
        scheduler = build_scheduler(config.scheduler, dict(scheduler_config))
        if config.vae_tiling:
            vae.enable_tiling()
        if config.vae_slicing:
            vae.enable_slicing()
        return cls.assemble(config, transformer, vae, text_encoder, tokenizer, scheduler)

    @classmethod
    def architecture(cls, config: CogVideoXConfig) -> dict:
        """CogVideoX-2b's or -5b's parts without weights (the memory planner's full-size model)."""
        from diffusers import AutoencoderKLCogVideoX

        from videosys.models.modules import architectures

        shape = dict(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True) if config.is_5b() \
            else {}
        return dict(transformer=CogVideoXTransformer3DModel(CogVideoXTransformerConfig(**shape)),
                    vae=AutoencoderKLCogVideoX(), text_encoder=architectures.t5_xxl_encoder(),
                    tokenizer=text_stack.build_tiny_tokenizer(config.max_text_length))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def vae_temporal_factor(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    def encode_prompt(self, prompts: list[str], negative_prompt: str, do_cfg: bool) -> torch.Tensor:
        """Text states (B, 226, C), laid out [uncond; cond] with CFG.

        As trained: every prompt is padded to max_text_length and T5 runs without an attention
        mask; the transformer attends to all the tokens, padding included.
        """
        def encode(texts: list[str], name: str = "prompt") -> torch.Tensor:
            text_stack.warn_if_cut(self.tokenizer, texts, self.config.max_text_length, name)
            ids = self.tokenizer(texts, padding="max_length", max_length=self.config.max_text_length, truncation=True,
                                 add_special_tokens=True, return_tensors="pt").input_ids
            return self.text_encoder(ids.to(self.text_encoder.device)).last_hidden_state

        states = encode(prompts)
        if do_cfg:
            states = torch.cat([encode([negative_prompt] * len(prompts), "negative_prompt"), states])
        return states.to(device=self.device, dtype=self.dtype)

    # ---- generate()'s hooks (VideoSysPipeline.run_generation) -------------------------------------
    # The run's generator draws the first noise (VideoSysPipeline.initial_latents), then goes on to the DPM
    # scheduler's per-step noise, in the order diffusers draws it.
    def latent_shape(self, run) -> tuple[int, ...]:
        v = run.values
        latent_frames = (v["num_frames"] - 1) // self.vae_temporal_factor + 1
        return (len(run.prompts), latent_frames, self.transformer.config.in_channels,
                v["height"] // self.vae_scale_factor, v["width"] // self.vae_scale_factor)  # (B, F, C, h, w)

    def begin_sampling(self, run, num_steps: int) -> torch.Tensor:
        run.state["old_x0"] = None  # DPM-Solver++(2M) remembers the previous step's x0 prediction
        return super().begin_sampling(run, num_steps)

    def guidance_scales(self, run):
        if self.config.use_dynamic_cfg:
            return dynamic_guidance_scales(run.guidance_scale, run.timesteps.tolist(), len(run.timesteps))
        return run.guidance_scale

    def predict(self, run, model_in, i, t, text):
        model_in = self.scheduler.scale_model_input(model_in, t)
        return self.transformer(model_in, text, run.model_timesteps[i].expand(model_in.shape[0])).float()

    def step(self, run, pred, i, t, latents):
        if self.config.scheduler == "dpm":
            t_back = run.timesteps[i - 1] if i > 0 else None
            latents, run.state["old_x0"] = self.dpm_step(pred, run.state["old_x0"], t, t_back, latents, run.generator)
        else:
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
        return latents.to(self.dtype)

    def step_noise(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise drawn on the CPU (so a seed gives the same video on every device) and copied without a host sync."""
        noise = torch.randn(like.shape, generator=generator, dtype=like.dtype)
        if like.device.type == "cuda":
            return noise.pin_memory().to(like.device, non_blocking=True)
        return noise.to(like.device)

    def dpm_step(self, pred: torch.Tensor, old_x0: torch.Tensor | None, t: torch.Tensor, t_back: torch.Tensor | None,
                 latents: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One CogVideoXDPMScheduler step (DPM-Solver++(2M) SDE) from the scheduler's own tables and helpers.

        diffusers' `step` draws its noise with `randn_tensor`, whose CPU-to-GPU copy blocks the host every
        step; here the same draws (same generator, order and dtype) reach the device asynchronously.
        """
        s = self.scheduler
        prev_t = t - s.config.num_train_timesteps // s.num_inference_steps
        a_t = s.alphas_cumprod[t]
        a_prev = s.alphas_cumprod[prev_t] if prev_t >= 0 else s.final_alpha_cumprod
        a_back = s.alphas_cumprod[t_back] if t_back is not None else None
        if s.config.prediction_type == "v_prediction":
            x0 = a_t**0.5 * latents - (1 - a_t) ** 0.5 * pred
        elif s.config.prediction_type == "epsilon":
            x0 = (latents - (1 - a_t) ** 0.5 * pred) / a_t**0.5
        else:  # "sample"
            x0 = pred
        h, r, _, _ = s.get_variables(a_t, a_prev, a_back)
        mult = list(s.get_mult(h, r, a_t, a_prev, a_back))
        noise_scale = (1 - a_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
        first_order = mult[0] * latents - mult[1] * x0 + noise_scale * self.step_noise(latents, generator)
        if old_x0 is None or prev_t < 0:
            return first_order, x0
        # the first-order sample's noise is drawn (and discarded) anyway, as diffusers does, to keep the stream
        x0_2m = mult[2] * x0 - mult[3] * old_x0
        return mult[0] * latents - mult[1] * x0_2m + noise_scale * self.step_noise(latents, generator), x0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, F, C, h, w) latents -> (B, T, H, W, 3) uint8, T = 4 (F - 1) + 1 frames."""
        latents = latents.permute(0, 2, 1, 3, 4) / self.vae.config.scaling_factor  # (B, C, F, h, w)
        video = self.vae.decode(latents.to(self.vae.dtype)).sample  # (B, 3, T, H, W) in [-1, 1]
        return self.to_frames(video)
