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
import json
import os
from dataclasses import dataclass

import torch

from videosys.core.config import BaseConfig, RequestError
from videosys.core.pipeline import VideoSysPipeline
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
PNDM_ORDER = 4  # diffusers' PNDMScheduler.pndm_order: its Runge-Kutta warm-up steps
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

    def check_request(self, values: dict) -> dict:
        """BaseConfig's checks, then the CausalVAE's grids (4x temporal with a causal first frame, 8x spatial:
        both releases) times the transformer's patch size (a local checkpoint's config.json, else 2), and
        v1.1's PNDM warm-up. Without a negative prompt the config's (the release's) is used."""
        values = super().check_request(values)
        if (values["num_frames"] - 1) % 4:
            raise RequestError("num_frames", f"num_frames={values['num_frames']}: CausalVAE takes 1 + 4k frames "
                               "(e.g. 1, 29, 93)")
        self.check_divisible(values, 8 * (self.stage_config_value("patch_size") or 2), "VAE downsampling x patch size")
        if self.uses_prk_warm_up():  # v1.1's PNDM; FreeInit's coarse runs have fewer steps (diffusers fails below)
            steps = values["num_inference_steps"]
            freeinit = self.freeinit_config()
            if (steps if freeinit is None else freeinit.steps(0, steps)) < PNDM_ORDER:
                raise RequestError("num_inference_steps", f"num_inference_steps={steps}: PNDM's Runge-Kutta warm-up "
                                   f"needs at least {PNDM_ORDER} steps")
        return values

    def stage_config_value(self, key: str):
        """`key` of the local checkpoint's transformer config: its stage folder (the release's layout), or the
        pipeline folder's transformer/; None for the tiny presets and hub ids."""
        if self.model_path is None:
            return None
        stage = os.path.join(self.model_path, self.transformer_type)
        return self.transformer_config_value(key, stage if os.path.isdir(stage) else None)

    def uses_prk_warm_up(self) -> bool:
        """v1.1 samples with diffusers' PNDMScheduler, whose default runs Runge-Kutta warm-up steps (a saved
        folder's scheduler config may skip them)."""
        if self.version != "v110":
            return False
        saved = os.path.join(self.model_path or "", "scheduler", "scheduler_config.json")
        if self.model_path is None or not os.path.isfile(saved):
            return True
        with open(saved) as f:
            return not json.load(f).get("skip_prk_steps", False)

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
    progress_name = "open-sora-plan"

    @classmethod
    def from_config(cls, config: OpenSoraPlanConfig, parts: dict | None = None) -> "OpenSoraPlanPipeline":
        from diffusers import EulerAncestralDiscreteScheduler, PNDMScheduler

        v110 = config.version == "v110"
        transformer_cls = LatteT2V if v110 else OpenSoraT2V
        # both releases build their scheduler with diffusers' default settings (sample_t2v.py)
        scheduler_cls = PNDMScheduler if v110 else EulerAncestralDiscreteScheduler
        dtype = config.torch_dtype()
        path = config.model_path
        if parts is not None:  # the planner's weightless full-size parts (`architecture`)
            transformer, vae, text_encoder, tokenizer = (parts[k] for k in ("transformer", "vae", "text_encoder",
                                                                            "tokenizer"))
            scheduler = scheduler_cls()
        elif path is None:  # tiny preset, random weights
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

    @classmethod
    def architecture(cls, config: OpenSoraPlanConfig) -> dict:
        """The release's parts without weights (the memory planner's full-size model): v1.2 OpenSoraT2V + CausalVAE +
        mT5-XXL, v1.1 LatteT2V + its CausalVAE + T5 v1.1 XXL."""
        from videosys.models.modules import architectures

        v110 = config.version == "v110"
        return dict(transformer=LatteT2V(LatteT2VConfig()) if v110 else OpenSoraT2V(OpenSoraT2VConfig()),
                    vae=CausalVAE(CausalVAEConfig(**CAUSALVAE_V110) if v110 else CausalVAEConfig()),
                    text_encoder=architectures.t5_xxl_encoder() if v110 else architectures.mt5_xxl_encoder(),
                    tokenizer=text_stack.build_tiny_tokenizer(config.max_text_length))

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
                                                         [negative_prompt] * len(prompts), max_len, self.device, "negative_prompt")
            cond, mask = torch.cat([uncond, cond]), torch.cat([uncond_mask, mask])
        mask = mask.bool()
        if bool(mask.all()):  # one host sync per generation, not per step
            mask = None
        return cond.to(self.dtype), mask

    # ---- generate()'s hooks (VideoSysPipeline.run_generation) -------------------------------------
    def latent_shape(self, run) -> tuple[int, ...]:
        v = run.values
        return (len(run.prompts), self.transformer.config.in_channels,
                *self.vae.latent_size(v["num_frames"], v["height"], v["width"]))  # (B, C, T', h, w)

    def begin_sampling(self, run, num_steps: int) -> torch.Tensor:
        # the ancestral sampler's (v1.2) per-step noise, drawn on the CPU from the seed like the initial noise
        run.state["step_kwargs"] = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            run.state["step_kwargs"]["generator"] = torch.Generator("cpu").manual_seed(int(run.seed) + 1)
        return super().begin_sampling(run, num_steps)

    def cache_timesteps(self, run) -> torch.Tensor:
        # PAB compares timesteps as VideoSys does, int(t): v1.2's fractional Euler timesteps are truncated (at 100
        # steps, step 89's t = 100.909 is 100, outside the (100, 850) window); v1.1's PNDM timesteps are ints already
        return torch.tensor([int(t) for t in run.timesteps])

    def predict(self, run, model_in, i, t, text, mask):
        model_in = self.scheduler.scale_model_input(model_in, t)
        channels = self.transformer.config.in_channels
        return self.transformer(model_in, run.model_timesteps[i], text, mask)[:, :channels]  # v1.1: + variance

    def step(self, run, pred, i, t, latents):
        return self.scheduler.step(pred, t, latents, return_dict=False, **run.state["step_kwargs"])[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T', h, w) latents -> (B, T, H, W, 3) uint8."""
        return self.to_frames(self.vae.decode(latents.to(self.vae.dtype)))
