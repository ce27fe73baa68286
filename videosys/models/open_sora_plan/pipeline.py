"""Open-Sora-Plan v1.2 text-to-video: OpenSoraPlanConfig (published defaults, `tiny` preset) and
OpenSoraPlanPipeline.

The release (LanguageBind/Open-Sora-Plan-v1.2.0) holds one transformer folder per training stage,
29x480p, 29x720p, 93x480p, 93x720p, and the CausalVAE in vae/; the text encoder is google/mt5-xxl
(512 tokens), loaded from its own repo. A folder written by `save_pretrained` (transformer/, vae/,
text_encoder/, tokenizer/, scheduler/, model_index.json) loads too.

Sampling as the release's scripts/text_condition/gpu/sample_t2v.sh and opensora/sample/: diffusers'
EulerAncestralDiscreteScheduler with its default settings, 100 steps, cfg 7.5, 24 fps, prompts
wrapped in the release's quality template and its negative prompt, text masks passed to the model.
"""

import os
import time
from dataclasses import dataclass

import torch

from videosys.core.config import BaseConfig
from videosys.core.pipeline import VideoSysOutput, VideoSysPipeline
from videosys.models.open_sora_plan.transformer import OpenSoraT2V, OpenSoraT2VConfig
from videosys.models.open_sora_plan.vae import CausalVAE, CausalVAEConfig
from videosys.utils import text as text_stack
from videosys.utils.hub import resolve_dir

# transformer subfolder of the release -> (frames, height, width) it was trained for
TRANSFORMER_TYPES = {"29x480p": (29, 480, 640), "29x720p": (29, 720, 1280), "93x480p": (93, 480, 640),
                     "93x720p": (93, 720, 1280)}
# opensora/sample/sample_t2v.py at v1.2.0 (whitespace as the release writes it)
POSITIVE_PROMPT = """
    (masterpiece), (best quality), (ultra-detailed), 
    {}. 
    """
NEGATIVE_PROMPT = """
    nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, 
    low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry.
    """
TINY_TEXT_DIM = 32


@dataclass
class OpenSoraPlanConfig(BaseConfig):
    """Open-Sora-Plan generation config. `OpenSoraPlanConfig()` is v1.2's 29x480p model (29 frames,
    480x640, 100 Euler-ancestral steps, cfg 7.5, 24 fps); `transformer_type` picks another stage
    ("29x720p", "93x480p", "93x720p") and its size. `OpenSoraPlanConfig(preset="tiny")` is a small
    random model that runs on a CPU in seconds."""

    version: str = "v120"
    transformer_type: str = "29x480p"
    vae_path: str | None = None  # None: model_path's vae/ folder
    text_encoder_path: str | None = None  # None: google/mt5-xxl (or model_path's text_encoder/ + tokenizer/)
    max_text_length: int = 512
    positive_prompt: str | None = POSITIVE_PROMPT  # "{}" is replaced by the prompt; None: the prompt as given
    negative_prompt: str = NEGATIVE_PROMPT  # used when generate() is given none
    enable_tiling: bool = True  # decode in 512-px / 8-latent-frame tiles, as the release's sampler
    tile_overlap_factor: float = 0.125

    model_name = "open-sora-plan"
    official_model_path = "LanguageBind/Open-Sora-Plan-v1.2.0"
    official_text_encoder_path = "google/mt5-xxl"
    defaults = dict(num_inference_steps=100, guidance_scale=7.5, fps=24)
    presets = {"tiny": dict(num_frames=9, height=64, width=64, num_inference_steps=100, guidance_scale=7.5, fps=24)}

    def __post_init__(self):
        if self.version != "v120":
            raise ValueError(f"version {self.version!r} is not implemented yet; only 'v120' (Open-Sora-Plan v1.2)")
        if self.transformer_type not in TRANSFORMER_TYPES:
            raise ValueError(f"unknown transformer_type {self.transformer_type!r}; "
                             f"choose from {list(TRANSFORMER_TYPES)}")
        if self.positive_prompt is not None and "{}" not in self.positive_prompt:
            raise ValueError("positive_prompt must contain '{}' where the prompt goes (or be None)")
        super().__post_init__()
        for name, value in zip(("num_frames", "height", "width"), TRANSFORMER_TYPES[self.transformer_type]):
            if getattr(self, name) is None:
                setattr(self, name, value)

    def teacache_model(self) -> str:
        return "open-sora-plan"

    def pab_model(self) -> str:
        return "open-sora-plan-v120"

    @property
    def pipeline_cls(self):
        return OpenSoraPlanPipeline


def tiny_components(seed: int = 0):
    """Transformer, VAE and text stack of the `tiny` preset: the release's classes, small widths, random weights."""
    tokenizer = text_stack.build_tiny_tokenizer(OpenSoraPlanConfig.max_text_length)
    text_encoder = text_stack.build_tiny_text_encoder(len(tokenizer), d_model=TINY_TEXT_DIM, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = OpenSoraT2V(OpenSoraT2VConfig(
            num_attention_heads=4, attention_head_dim=12, num_layers=2, cross_attention_dim=48,
            caption_channels=TINY_TEXT_DIM, sample_size=[8, 8], sample_size_t=3, interpolation_scale_h=1.0,
            interpolation_scale_w=1.0, interpolation_scale_t=1.0))
        vae = CausalVAE(CausalVAEConfig(hidden_size=8, hidden_size_mult=[1, 2, 2, 2], num_res_blocks=1,
                                        norm_num_groups=4))
    return transformer.eval(), vae.eval(), text_encoder, tokenizer


def load_mt5(path: str, dtype: torch.dtype):
    """Tokenizer and mT5 encoder from a folder with text_encoder/ + tokenizer/, or an mT5 repo (google/mt5-xxl)."""
    from transformers import AutoTokenizer, MT5EncoderModel

    if os.path.isdir(os.path.join(path, "text_encoder")):
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
        encoder_dir = os.path.join(path, "text_encoder")
    else:
        folder = resolve_dir(path)
        tokenizer, encoder_dir = AutoTokenizer.from_pretrained(folder), folder
    return tokenizer, MT5EncoderModel.from_pretrained(encoder_dir, dtype=dtype).eval()


def _is_pipeline_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


class OpenSoraPlanPipeline(VideoSysPipeline):
    pipeline_class_name = "OpenSoraPlanPipeline"

    @classmethod
    def from_config(cls, config: OpenSoraPlanConfig) -> "OpenSoraPlanPipeline":
        from diffusers import EulerAncestralDiscreteScheduler

        dtype = config.torch_dtype()
        path = config.model_path
        if path is None:  # tiny preset, random weights
            transformer, vae, text_encoder, tokenizer = tiny_components()
            scheduler = EulerAncestralDiscreteScheduler()
        elif _is_pipeline_folder(path):
            transformer = OpenSoraT2V.from_pretrained(path, "transformer", dtype=dtype)
            vae = CausalVAE.from_pretrained(config.vae_path or path, None if config.vae_path else "vae", dtype=dtype)
            if config.text_encoder_path:
                tokenizer, text_encoder = load_mt5(config.text_encoder_path, dtype)
            else:  # our folders hold the encoder class they were saved with (mT5, or the tiny T5)
                tokenizer, text_encoder = text_stack.load_text_stack(path, dtype, "cpu")
            scheduler = EulerAncestralDiscreteScheduler.from_pretrained(resolve_dir(path, "scheduler"))
        else:  # the release: <transformer_type>/ and vae/ in one repo, mT5 in its own
            transformer = OpenSoraT2V.from_pretrained(path, config.transformer_type, dtype=dtype)
            vae = CausalVAE.from_pretrained(config.vae_path or path, None if config.vae_path else "vae", dtype=dtype)
            tokenizer, text_encoder = load_mt5(config.text_encoder_path or config.official_text_encoder_path, dtype)
            scheduler = EulerAncestralDiscreteScheduler()  # the release's sample_t2v.py: default settings
        if config.enable_tiling:
            vae.enable_tiling(overlap_factor=config.tile_overlap_factor)
        return cls.assemble(config, transformer, vae, text_encoder, tokenizer, scheduler)

    # ---- inputs --------------------------------------------------------------------------------
    def prepare_prompts(self, prompts: list[str]) -> list[str]:
        template = self.config.positive_prompt
        return prompts if template is None else [template.format(p) for p in prompts]

    def encode_prompt(self, prompts: list[str], negative_prompt: str, do_cfg: bool):
        """mT5 states laid out [uncond; cond] and the (B, S) text mask (None when nothing is masked)."""
        max_len = self.config.max_text_length
        cond, mask = text_stack.encode_text(self.tokenizer, self.text_encoder, prompts, max_len, self.device)
        if do_cfg:
            uncond, uncond_mask = text_stack.encode_text(self.tokenizer, self.text_encoder,
                                                         [negative_prompt] * len(prompts), max_len, self.device)
            cond, mask = torch.cat([uncond, cond]), torch.cat([uncond_mask, mask])
        mask = mask.bool()
        if bool(mask.all()):  # one host sync per generation, not per step
            mask = None
        return cond.to(self.dtype), mask

    # ---- generation ----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompt, negative_prompt: str | None = None, seed: int = 0, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None) -> VideoSysOutput:
        """Videos for `prompt` (a string or a list): (B, T, H, W, 3) uint8 in `.video`.

        num_frames is 1 + 4k (the CausalVAE's causal first frame: 29, 93, ...); height and width are
        multiples of 16. Without a negative prompt the config's (the release's) is used.
        """
        prompts = self.prepare_prompts(self.as_prompt_list(prompt))
        if negative_prompt is None:
            negative_prompt = self.config.negative_prompt
        if not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string or None, got {negative_prompt!r}")
        a = self.resolve(num_frames=num_frames, height=height, width=width,
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        self.check_spatial(a["height"], a["width"], self.vae.config.spatial_ratio * self.transformer.config.patch_size)
        latent_t, latent_h, latent_w = self.vae.latent_size(a["num_frames"], a["height"], a["width"])
        start = time.perf_counter()
        do_cfg = a["guidance_scale"] > 1.0
        text, mask = self.encode_prompt(prompts, negative_prompt, do_cfg)

        channels = self.transformer.config.in_channels
        latents = self.seeded_noise((len(prompts), channels, latent_t, latent_h, latent_w), seed)
        latents = (latents * self.scheduler.init_noise_sigma).to(self.dtype)
        self.scheduler.set_timesteps(a["num_inference_steps"])
        timesteps = self.scheduler.timesteps  # CPU: the scheduler indexes its tables without a device sync
        model_timesteps = timesteps.to(self.device)
        # the ancestral sampler's per-step noise, drawn on the CPU from the seed like the initial noise
        generator = torch.Generator("cpu").manual_seed(int(seed) + 1)

        denoise_start = time.perf_counter()
        split_cfg = do_cfg and self.cfg_parallel
        text, mask = (self.branch(text), self.branch(mask)) if split_cfg else (text, mask)
        for i, t in self.denoise_steps(timesteps, "open-sora-plan"):
            model_in = torch.cat([latents, latents]) if do_cfg and not split_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            pred = self.transformer(model_in, model_timesteps[i], text, mask)
            if do_cfg:
                pred = self.guide(self.gather_branches(pred) if split_cfg else pred, a["guidance_scale"])
            latents = self.scheduler.step(pred, t, latents, generator=generator, return_dict=False)[0]
        return self.finish(latents, lambda z: self.to_frames(self.vae.decode(z.to(self.vae.dtype))), start, denoise_start, len(timesteps))
