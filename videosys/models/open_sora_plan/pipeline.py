"""Open-Sora-Plan text-to-video, v1.1 and v1.2: OpenSoraPlanConfig (published defaults per version, `tiny`
presets) and OpenSoraPlanPipeline.

Each release holds one transformer folder per training stage and the CausalVAE in vae/; the text encoder
is loaded from its own repo. A folder written by `save_pretrained` (transformer/, vae/, text_encoder/,
tokenizer/, scheduler/, model_index.json) loads too.
- v1.2 (LanguageBind/Open-Sora-Plan-v1.2.0: 29x480p, 29x720p, 93x480p, 93x720p): OpenSoraT2V (full 3D
  attention), google/mt5-xxl (512 tokens). Sampling as scripts/text_condition/gpu/sample_t2v.sh and
  opensora/sample/ at v1.2.0: diffusers' EulerAncestralDiscreteScheduler with its default settings, 100 steps,
  cfg 7.5, 24 fps, prompts wrapped in the release's quality template and its negative prompt, text masks
  passed to the model.
- v1.1 (LanguageBind/Open-Sora-Plan-v1.1.0: 65x512x512, 221x512x512): LatteT2V (Latte's spatial / temporal
  blocks), DeepFloyd/t5-v1_1-xxl (300 tokens). Sampling as scripts/text_condition/sample_video_65.sh and
  opensora/sample/ at v1.1.0: diffusers' PNDMScheduler with its default settings (PRK warm-up included), 150
  steps, cfg 7.5, 24 fps, prompts lower-cased and stripped, negative prompt "", text cut to the prompt's
  tokens (mask_feature), VAE tiles of 256 px / 17 latent frames overlapping by 0.25.
"""

import inspect
import os
import time
from dataclasses import dataclass

import torch

from videosys.core.config import BaseConfig
from videosys.core.pipeline import VideoSysOutput, VideoSysPipeline
from videosys.models.open_sora_plan.cache_settings import CACHE_SETTINGS
from videosys.models.open_sora_plan.latte_t2v import LatteT2V, LatteT2VConfig
from videosys.models.open_sora_plan.transformer import OpenSoraT2V, OpenSoraT2VConfig
from videosys.models.open_sora_plan.vae import CAUSALVAE_V110, CausalVAE, CausalVAEConfig
from videosys.utils import text as text_stack
from videosys.models.modules.pretrained import load_pretrained
from videosys.utils.hub import resolve_dir

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
TINY = dict(num_frames=9, height=64, width=64)

# Per release: hub id, text encoder, transformer subfolders -> (frames, height, width) they were trained for,
# generation defaults, text length, prompt handling and VAE tiling (what each release's sample script uses).
VERSIONS = {
    "v110": dict(
        model_path="LanguageBind/Open-Sora-Plan-v1.1.0", text_encoder_path="DeepFloyd/t5-v1_1-xxl",
        transformer_types={"65x512x512": (65, 512, 512), "221x512x512": (221, 512, 512)},
        defaults=dict(num_inference_steps=150, guidance_scale=7.5, fps=24),  # sample_video_65.sh
        max_text_length=300, positive_prompt="{}", negative_prompt="",
        tiling=dict(sample_size=256, latent_size=32, latent_frames=17), tile_overlap_factor=0.25),
    "v120": dict(
        model_path="LanguageBind/Open-Sora-Plan-v1.2.0", text_encoder_path="google/mt5-xxl",
        transformer_types={"29x480p": (29, 480, 640), "29x720p": (29, 720, 1280), "93x480p": (93, 480, 640),
                           "93x720p": (93, 720, 1280)},
        defaults=dict(num_inference_steps=100, guidance_scale=7.5, fps=24),
        max_text_length=512, positive_prompt=POSITIVE_PROMPT, negative_prompt=NEGATIVE_PROMPT,
        tiling=dict(sample_size=512, latent_size=64, latent_frames=8), tile_overlap_factor=0.125),
}


@dataclass
class OpenSoraPlanConfig(BaseConfig):
    """Open-Sora-Plan generation config. `OpenSoraPlanConfig()` is v1.2's 29x480p model (29 frames,
    480x640, 100 Euler-ancestral steps, cfg 7.5, 24 fps); `transformer_type` picks another stage
    ("29x720p", "93x480p", "93x720p") and its size. `OpenSoraPlanConfig(version="v110")` is v1.1's 65x512x512
    model (65 frames, 512x512, 150 PNDM steps, cfg 7.5, 24 fps; "221x512x512": 221 frames).
    `OpenSoraPlanConfig(preset="tiny")` (either version) is a small random model that runs on a CPU in seconds.

    Fields left None take the version's value (VERSIONS): transformer_type, max_text_length, positive_prompt
    (v1.2: the quality template; "{}" uses the prompt as given), negative_prompt, tile_overlap_factor."""

    version: str = "v120"
    transformer_type: str | None = None  # None: the version's first stage (29x480p, 65x512x512)
    vae_path: str | None = None  # None: model_path's vae/ folder
    text_encoder_path: str | None = None  # None: the version's (or model_path's text_encoder/ + tokenizer/)
    max_text_length: int | None = None
    positive_prompt: str | None = None  # "{}" is replaced by the prompt
    negative_prompt: str | None = None  # used when generate() is given none
    enable_tiling: bool = True  # decode in overlapping tiles, as the releases' samplers (--enable_tiling)
    tile_overlap_factor: float | None = None

    model_name = "open-sora-plan"
    cache_settings = CACHE_SETTINGS  # cache_settings.py: the published settings of each cache method
    official_model_path = VERSIONS["v120"]["model_path"]
    official_text_encoder_path = VERSIONS["v120"]["text_encoder_path"]
    defaults = VERSIONS["v120"]["defaults"]
    presets = {"tiny": dict(TINY, **VERSIONS["v120"]["defaults"])}

    def __post_init__(self):
        self.check_fields()  # types first: the version's values are read before BaseConfig's checks run
        if self.version not in VERSIONS:
            raise ValueError(f"unknown version {self.version!r}; choose from {sorted(VERSIONS)} "
                             f"(Open-Sora-Plan v1.1, v1.2)")
        release = VERSIONS[self.version]
        types = release["transformer_types"]
        if self.transformer_type is None:
            self.transformer_type = next(iter(types))
        if self.transformer_type not in types:
            raise ValueError(f"unknown transformer_type {self.transformer_type!r} for version {self.version!r}; "
                             f"choose from {list(types)}")
        for name in ("max_text_length", "positive_prompt", "negative_prompt", "tile_overlap_factor"):
            if getattr(self, name) is None:
                setattr(self, name, release[name])
        if "{}" not in self.positive_prompt:
            raise ValueError("positive_prompt must contain '{}' where the prompt goes")
        # the version's published values shadow the class-level (v1.2) ones for this instance
        self.official_model_path = release["model_path"]
        self.official_text_encoder_path = release["text_encoder_path"]
        self.defaults = release["defaults"]
        self.presets = {"tiny": dict(TINY, **release["defaults"])}
        super().__post_init__()
        for name, value in zip(("num_frames", "height", "width"), types[self.transformer_type]):
            if getattr(self, name) is None:
                setattr(self, name, value)

    def sp_heads(self) -> int | None:
        """v1.2's full attention runs Ulysses (heads sharded); v1.1 (Latte's DSP) has no limit."""
        if self.version != "v120":
            return None
        if self.model_path is None:
            return 4  # tiny_components' OpenSoraT2V (tests/test_config_checks.py keeps the two equal)
        stage = os.path.join(self.model_path, self.transformer_type)  # the release's layout, else a pipeline folder
        return self.transformer_config_value("num_attention_heads", stage if os.path.isdir(stage) else None)

    def cache_models(self) -> tuple[str, ...]:
        """PAB's defaults differ per version; TeaCache's coefficients (fitted on v1.1 65x512x512) are the family's."""
        return (f"open-sora-plan-{self.version}", "open-sora-plan")

    @property
    def pipeline_cls(self):
        return OpenSoraPlanPipeline


def tiny_components(version: str = "v120", seed: int = 0):
    """Transformer, VAE and text stack of the `tiny` preset: the release's classes, small widths, random weights."""
    tokenizer = text_stack.build_tiny_tokenizer(VERSIONS[version]["max_text_length"])
    text_encoder = text_stack.build_tiny_text_encoder(len(tokenizer), d_model=TINY_TEXT_DIM, seed=seed)
    vae_config = dict(hidden_size=8, hidden_size_mult=[1, 2, 2, 2], num_res_blocks=1, norm_num_groups=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if version == "v110":
            transformer = LatteT2V(LatteT2VConfig(
                num_attention_heads=4, attention_head_dim=12, num_layers=2, cross_attention_dim=48,
                caption_channels=TINY_TEXT_DIM, sample_size=[8, 8], video_length=3))
            vae = CausalVAE(CausalVAEConfig(**CAUSALVAE_V110, **vae_config))
        else:
            transformer = OpenSoraT2V(OpenSoraT2VConfig(
                num_attention_heads=4, attention_head_dim=12, num_layers=2, cross_attention_dim=48,
                caption_channels=TINY_TEXT_DIM, sample_size=[8, 8], sample_size_t=3, interpolation_scale_h=1.0,
                interpolation_scale_w=1.0, interpolation_scale_t=1.0))
            vae = CausalVAE(CausalVAEConfig(**vae_config))
    return transformer.eval(), vae.eval(), text_encoder, tokenizer


def load_text_encoder(path: str, version: str, dtype: torch.dtype):
    """Tokenizer and encoder from a folder with text_encoder/ + tokenizer/, or an encoder repo: T5 v1.1 XXL
    (DeepFloyd/t5-v1_1-xxl) for v1.1, mT5 (google/mt5-xxl) for v1.2."""
    from transformers import AutoTokenizer, MT5EncoderModel, T5EncoderModel

    encoder_cls = T5EncoderModel if version == "v110" else MT5EncoderModel
    if os.path.isdir(os.path.join(path, "text_encoder")):
        tokenizer = load_pretrained(AutoTokenizer, os.path.join(path, "tokenizer"))
        encoder_dir = os.path.join(path, "text_encoder")
    else:
        folder = resolve_dir(path)
        tokenizer, encoder_dir = load_pretrained(AutoTokenizer, folder), folder
    return tokenizer, load_pretrained(encoder_cls, encoder_dir, dtype=dtype).eval()


def _is_pipeline_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


class OpenSoraPlanPipeline(VideoSysPipeline):
    pipeline_class_name = "OpenSoraPlanPipeline"

    @classmethod
    def from_config(cls, config: OpenSoraPlanConfig) -> "OpenSoraPlanPipeline":
        from diffusers import EulerAncestralDiscreteScheduler, PNDMScheduler

        v110 = config.version == "v110"
        transformer_cls = LatteT2V if v110 else OpenSoraT2V
        # both releases build their scheduler with diffusers' default settings (sample_t2v.py)
        scheduler_cls = PNDMScheduler if v110 else EulerAncestralDiscreteScheduler
        dtype = config.torch_dtype()
        path = config.model_path
        if path is None:  # tiny preset, random weights
            transformer, vae, text_encoder, tokenizer = tiny_components(config.version)
            scheduler = scheduler_cls()
        else:
            folder = _is_pipeline_folder(path)
            transformer = transformer_cls.from_pretrained(path, "transformer" if folder else config.transformer_type,
                                                          dtype=dtype)
            vae = CausalVAE.from_pretrained(config.vae_path or path, None if config.vae_path else "vae", dtype=dtype)
            if config.text_encoder_path or not folder:  # the release: the encoder from its own repo
                text_path = config.text_encoder_path or config.official_text_encoder_path
                tokenizer, text_encoder = load_text_encoder(text_path, config.version, dtype)
            else:  # our folders hold the encoder class they were saved with (T5 / mT5, or the tiny T5)
                tokenizer, text_encoder = text_stack.load_text_stack(path, dtype, "cpu")
            scheduler = (scheduler_cls.from_pretrained(resolve_dir(path, "scheduler")) if folder
                         else scheduler_cls())
        if config.enable_tiling:
            vae.enable_tiling(**VERSIONS[config.version]["tiling"], overlap_factor=config.tile_overlap_factor)
        return cls.assemble(config, transformer, vae, text_encoder, tokenizer, scheduler)

    # ---- inputs --------------------------------------------------------------------------------
    def prepare_prompts(self, prompts: list[str]) -> list[str]:
        """The version's prompt handling: v1.2 wraps the prompt in its quality template; v1.1 lower-cases and
        strips it (the release's _text_preprocessing; its optional caption cleaning is not applied)."""
        if self.config.version == "v110":
            prompts = [p.lower().strip() for p in prompts]
        return [self.config.positive_prompt.format(p) for p in prompts]

    def encode_prompt(self, prompts: list[str], negative_prompt: str, do_cfg: bool):
        """Text states laid out [uncond; cond] and the (B, S) text mask (None when nothing is masked).

        v1.2: full max_text_length tokens with their mask; v1.1: tokens cut to the prompt's length
        (text_stack.encode_text_cut, the release's mask_feature)."""
        max_len = self.config.max_text_length
        if self.config.version == "v110":
            negative_prompt = negative_prompt.lower().strip()
            cond, mask = text_stack.encode_text_cut(self.tokenizer, self.text_encoder, prompts, negative_prompt,
                                                    max_len, self.device, do_cfg)
            return cond.to(self.dtype), mask
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

        num_frames is 1 + 4k (the CausalVAE's causal first frame: 29, 65, 93, 221, ...); height and width are
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
        prk = not getattr(self.scheduler.config, "skip_prk_steps", True)  # v1.1's PNDM (diffusers fails below)
        warm_up = getattr(self.scheduler, "pndm_order", 0) if prk else 0
        if self.fewest_run_steps(a["num_inference_steps"]) < warm_up:  # FreeInit's coarse runs have fewer
            raise ValueError(f"num_inference_steps={a['num_inference_steps']}: PNDM's Runge-Kutta warm-up needs at "
                             f"least {warm_up} steps")
        latent_t, latent_h, latent_w = self.vae.latent_size(a["num_frames"], a["height"], a["width"])
        start = time.perf_counter()
        do_cfg = a["guidance_scale"] > 1.0
        text, mask = self.encode_prompt(prompts, negative_prompt, do_cfg)

        channels = self.transformer.config.in_channels
        latents = self.seeded_noise((len(prompts), channels, latent_t, latent_h, latent_w), seed)
        latents = (latents * self.scheduler.init_noise_sigma).to(self.dtype)

        def run(latents, num_steps):  # one sampling run (FreeInit runs several)
            self.scheduler.set_timesteps(num_steps)
            timesteps = self.scheduler.timesteps  # CPU: the scheduler indexes its tables without a device sync
            model_timesteps = timesteps.to(self.device)
            # the ancestral sampler's (v1.2) per-step noise, drawn on the CPU from the seed like the initial noise
            step_kwargs = {}
            if "generator" in inspect.signature(self.scheduler.step).parameters:
                step_kwargs["generator"] = torch.Generator("cpu").manual_seed(int(seed) + 1)

            def predict(model_in, i, t, text, mask):
                model_in = self.scheduler.scale_model_input(model_in, t)
                return self.transformer(model_in, model_timesteps[i], text, mask)[:, :channels]  # v1.1: + variance

            def step(pred, i, t, latents):
                return self.scheduler.step(pred, t, latents, return_dict=False, **step_kwargs)[0]

            # PAB compares timesteps as VideoSys does, int(t): v1.2's fractional Euler timesteps are truncated (at 100
            # steps, step 89's t = 100.909 is 100, outside the (100, 850) window); v1.1's PNDM timesteps are ints already
            cache_timesteps = torch.tensor([int(t) for t in timesteps])
            return self.denoise(latents, timesteps, predict, step, (text, mask), do_cfg, a["guidance_scale"],
                                "open-sora-plan", cache_timesteps)

        denoise_start = time.perf_counter()
        latents = self.sample(latents, run, a["num_inference_steps"], seed)
        decode = lambda z: self.to_frames(self.vae.decode(z.to(self.vae.dtype)))  # noqa: E731
        return self.finish(latents, decode, start, denoise_start, self.denoised_steps)
