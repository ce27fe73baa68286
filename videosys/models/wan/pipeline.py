"""Wan 2.1 / 2.2: WanConfig (the releases' published defaults, tiny presets, request checks) and WanPipeline.

Releases (checkpoints.py): Wan2.1 T2V 1.3B / 14B, I2V 14B 480P / 720P, Wan2.2 T2V-A14B / I2V-A14B (two experts:
experts.py) and TI2V-5B (48-channel 4x16x16 VAE, per-token timesteps; text-to-video, or text+image-to-video when an
image is given). `model_path`: a Wan-AI/...-Diffusers hub id or folder, or an original Wan folder (transformer only;
vae_path / text_encoder_path (/ image_encoder_path) name the rest). The sampling is diffusers' WanPipeline /
WanImageToVideoPipeline's (tests/test_wan.py compares them): UniPC flow matching, CFG (cond and uncond batched),
the first noise drawn from the seed's CPU generator as diffusers' randn_tensor draws it.
"""

import html
import json
import os
import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from videosys.core.config import BaseConfig, RequestError
from videosys.core.pipeline import VideoSysPipeline
from videosys.models.wan import components, conditioning
from videosys.models.wan.cache_settings import CACHE_SETTINGS, cache_models
from videosys.models.wan.checkpoints import CHECKPOINTS, TINY_KINDS, kind_of_path, original_layout, tiny_preset
from videosys.models.wan.conditioning import check_image, load_image
from videosys.models.wan.experts import WanExperts
from videosys.utils import text as text_stack

# the trained demo model (scripts/train_demo.py --family wan): a small Wan trained on the demo's procedural clips
DEMO_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "assets",
                         "demo-wan")
DEMO_KIND = "t2v-1.3B"  # its layout: one transformer, the 16-channel 4x8x8 VAE, flow shift 3.0
# the demo's size and sampling (17 frames: 5 latent frames; its clips are 64x64 at 8 fps). cfg 2.0, not the releases'
# 5.0: measured on the shipped model, 24 demo prompts x seeds 0-1, both colour and direction right 31/48 at 5.0,
# 38/48 at 3.0, 40/48 at 2.0, 39/48 at 1.5 (seeds 2-4, held out: 54/72 at 2.0); docs/demo.md
DEMO_PRESET = dict(num_frames=17, height=64, width=64, num_inference_steps=50, guidance_scale=2.0, fps=8)


@dataclass
class WanConfig(BaseConfig):
    """Wan generation config. `WanConfig()` is Wan2.1-T2V-1.3B; `model_path` names another release (its published
    defaults follow: checkpoints.py), `kind` says which release a folder is when its files do not.
    Presets: `tiny` (T2V), `tiny-i2v` (Wan2.1 I2V: CLIP tokens), `tiny-a14b` (two experts), `tiny-ti2v` (TI2V-5B),
    all random; `demo`: a small Wan trained on coloured shapes moving across plain backgrounds ("a red circle moving
    to the right"), shipped in videosys/assets/demo-wan (its negative prompt, as in training, is empty)."""

    kind: str | None = None  # a CHECKPOINTS key; None: from the preset / model_path / the folder's configs
    flow_shift: float | None = None  # None: the release's published shift
    guidance_scale_2: float | None = None  # the low-noise expert's CFG scale (two experts); None: the release's
    negative_prompt: str | None = None  # None: the release's (Chinese) default negative prompt
    image: str | None = None  # the first frame's file, when a request gives none (`--set image=first.png`)
    max_text_length: int = components.MAX_TEXT_LENGTH
    # TeaCache4Wan2.1's two modes (cache_settings.py): True, their recommended: indicator e0 (the time projection),
    # the first 5 steps computed; False: indicator e (the time embedding), the first and last steps computed
    teacache_use_ret_steps: bool = True
    # a JSON written by scripts/calibrate_teacache.py (TeaCache's coefficients or MagCache's ratios, one table per
    # expert for two experts): this model's setting for that method, over the published one
    cache_calibration: str | None = None
    vae_tiling: bool = False  # decode in spatial tiles (diffusers' AutoencoderKLWan.enable_tiling): less memory
    # an original-layout model_path holds the transformer only: the other parts' diffusers-layout folders / hub ids
    vae_path: str | None = None
    text_encoder_path: str | None = None  # text_encoder/ and tokenizer/
    image_encoder_path: str | None = None  # image_encoder/ and image_processor/ (Wan2.1 I2V)

    model_name = "wan"
    official_model_path = CHECKPOINTS["t2v-1.3B"].hub_id
    defaults = CHECKPOINTS["t2v-1.3B"].defaults
    presets = {**{name: tiny_preset(kind) for name, kind in TINY_KINDS.items()}, "demo": DEMO_PRESET}
    cache_settings = CACHE_SETTINGS
    REQUEST_VALUES: ClassVar[tuple[str, ...]] = (*BaseConfig.REQUEST_VALUES, "guidance_scale_2")

    def __post_init__(self):
        self.check_fields()
        if self.kind is not None and self.kind not in CHECKPOINTS:
            raise ValueError(f"kind must be one of {sorted(CHECKPOINTS)}, got {self.kind!r}")
        if self.preset is not None and self.preset not in self.presets:
            raise ValueError(f"unknown preset {self.preset!r} for wan; choose from {sorted(self.presets)}")
        if self.preset == "demo" and self.model_path is None:
            if not os.path.isdir(DEMO_PATH):
                raise FileNotFoundError(f"the demo checkpoint is missing from {DEMO_PATH} (reinstall videosys, or train "
                                        "it: python scripts/train_demo.py --family wan --output <folder>, see its "
                                        "docstring)")
            self.model_path = DEMO_PATH
        self.kind = self.kind or self.infer_kind()
        if self.preset is None:
            self.defaults = CHECKPOINTS[self.kind].defaults  # this release's, before BaseConfig fills the fields
        super().__post_init__()
        if self.flow_shift is None:
            self.flow_shift = CHECKPOINTS[self.kind].flow_shift
        if self.guidance_scale_2 is None and self.checkpoint.boundary_ratio is not None:
            published = self.checkpoint.guidance_scale_2
            self.guidance_scale_2 = published if self.preset is None else self.guidance_scale

    def infer_kind(self) -> str:
        if self.preset == "demo":
            return DEMO_KIND
        if self.model_path is None:
            return TINY_KINDS[self.preset] if self.preset is not None else "t2v-1.3B"
        return kind_of_path(self.model_path)

    @property
    def checkpoint(self):
        return CHECKPOINTS[self.kind]

    def default_negative_prompt(self) -> str:
        if self.negative_prompt is not None:
            return self.negative_prompt
        return "" if self.preset == "demo" else self.checkpoint.negative_prompt  # the demo's uncond: the empty prompt

    def prompt_vocabulary(self) -> frozenset[str] | None:
        if self.preset == "demo":
            from videosys.utils.demo_data import caption_words

            return caption_words()
        return None

    def check_request(self, values: dict) -> dict:
        """BaseConfig's checks, then the VAE's grids and the image.

        num_frames: 4k + 1 (the VAE keeps the first frame and compresses the rest 4x). height / width: divisible by
        the VAE's spatial factor x the patch (16 for Wan2.1 / the A14B experts, 32 for TI2V-5B). An image-to-video
        release needs `image` (a file path, an (H, W, 3) uint8 array / tensor, or a PIL image); a path must exist."""
        values = self.check_sizes(super().check_request(values))
        image = self.image if values.get("image") is None else values["image"]
        c = self.checkpoint
        required = c.image and not self.checking_own_values  # an I2V config needs no image of its own: calls give it
        values["image"] = check_image(image, required, c.image or c.expand_timesteps, self.kind)
        return values

    def check_sizes(self, values: dict) -> dict:
        if (values["num_frames"] - 1) % 4:
            raise RequestError("num_frames", f"num_frames={values['num_frames']} must be 4k + 1 (1, 5, ..., 81): the "
                               "Wan VAE keeps the first frame and compresses the rest 4x")
        grid = self.checkpoint.spatial
        self.check_divisible(values, grid, f"the VAE's {grid // 2}x downsampling x the 2x2 patch")
        scale_2 = values.get("guidance_scale_2")
        if scale_2 is not None and self.checkpoint.boundary_ratio is None:
            raise RequestError("guidance_scale_2", f"guidance_scale_2 is the low-noise expert's scale: {self.kind} has "
                               "one transformer")
        return values

    def sp_heads(self) -> int | None:
        if self.model_path is None:
            return components.tiny_transformer_config(self.kind).num_attention_heads
        heads = self.transformer_config_value("num_attention_heads") or self.transformer_config_value("num_heads")
        if heads is None and original_layout(self.model_path) == "experts":  # the original's name, per expert
            heads = self.transformer_config_value("num_heads", os.path.join(self.model_path, "high_noise_model"))
        return heads

    def calibrated_settings(self) -> dict:
        """The calibration file's tables: {"high": {method: fields}, "low": {...}} (two experts) or {"": {...}}."""
        if self.cache_calibration is None:
            return {}
        with open(self.cache_calibration) as f:
            report = json.load(f)
        method = report.get("method") or ("magcache" if "ratios" in report else "teacache")
        key = "ratios" if method == "magcache" else "coefficients"
        tables = report.get("experts", {"": report})
        return {name: {method: {key: tuple(table[key])}} for name, table in tables.items()}

    def published_cache_settings(self) -> dict[str, dict]:
        """The release's published settings, a calibration file's table over them (the high-noise expert's)."""
        out = super().published_cache_settings()
        tables = self.calibrated_settings()
        for method, fields in (tables.get("high") or tables.get("") or {}).items():
            out[method] = {**out.get(method, {}), **fields}
        return out

    def expert_cache_settings(self) -> dict:
        """Per expert: {"high": published + its table, "low": published + its table} (two experts)."""
        tables = self.calibrated_settings()
        if "low" not in tables:
            return {}
        base = super().published_cache_settings()
        return {name: {m: {**base.get(m, {}), **fields} for m, fields in tables[name].items()}
                for name in ("high", "low")}

    def cache_models(self) -> tuple[str, ...]:
        """A release's keys (cache_settings.cache_models); the demo has its own calibrated numbers (none of the
        1.3B's: its weights are another model's), then the ones every Wan shares."""
        if self.preset == "demo":
            return ("wan-demo", "wan")
        return cache_models(self.kind, self.teacache_use_ret_steps, self.image is not None)

    @property
    def pipeline_cls(self):
        return WanPipeline


def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt_clean: ftfy (when installed), HTML unescaped twice, whitespace collapsed."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


class WanPipeline(VideoSysPipeline):
    pipeline_class_name = "WanPipeline"
    progress_name = "wan"

    def __init__(self, config, transformer, vae, text_encoder, tokenizer, scheduler):
        super().__init__(config, transformer, vae, text_encoder, tokenizer, scheduler)
        self.image_encoder = self.image_processor = None
        c = config.checkpoint
        parts = ["transformer", "transformer_2"] if c.boundary_ratio is not None else ["transformer"]
        parts += ["vae", "text_encoder", "tokenizer", "scheduler"]
        parts += ["image_encoder", "image_processor"] if c.image_encoder else []
        self.components = tuple(parts)
        if c.image:
            self.pipeline_class_name = "WanImageToVideoPipeline"

    @classmethod
    def from_config(cls, config: WanConfig, parts: dict | None = None) -> "WanPipeline":
        """`parts`: the components given (the planner's weightless full-size ones: `architecture`), else loaded."""
        if parts is not None:
            scheduler_folder = None
        elif config.model_path is None:
            parts = components.tiny_components(config.kind)
            scheduler_folder = None
        else:
            from videosys.utils.hub import resolve_dir

            parts = components.load_components(config.model_path, config.kind, config.torch_dtype(), config.vae_path,
                                               config.text_encoder_path, config.image_encoder_path)
            original = original_layout(config.model_path) is not None
            scheduler_folder = None if original else resolve_dir(config.model_path, "scheduler")
        transformer = parts["transformer"]
        if "transformer_2" in parts:
            boundary = config.checkpoint.boundary_ratio * 1000  # x num_train_timesteps, as diffusers
            transformer = WanExperts(parts["transformer"], parts["transformer_2"], boundary,
                                     config.expert_cache_settings())
        if config.vae_tiling:
            parts["vae"].enable_tiling()
        scheduler = components.scheduler(config.flow_shift, scheduler_folder)
        pipe = cls.assemble(config, transformer, parts["vae"], parts["text_encoder"], parts["tokenizer"], scheduler)
        # the Wan VAE decodes in fp32 whatever the model's dtype (diffusers' Wan docs load AutoencoderKLWan in
        # torch.float32 beside a bf16 transformer; bf16 decoding bands the colours)
        if pipe.vae.dtype != torch.float32:
            pipe.vae = pipe.vae.to(dtype=torch.float32)
        if config.compile and isinstance(transformer, WanExperts):  # assemble compiled the blocks; now each forward
            from videosys.models.modules.compile import compile_regions

            for expert in pipe.experts:
                compile_regions(expert)
        for expert in pipe.experts:  # TeaCache's indicator, as the published mode measured it
            expert.indicator_source = "e0" if config.teacache_use_ret_steps else "e"
        if "image_encoder" in parts:
            pipe.image_encoder = parts["image_encoder"].to(pipe.device)
            pipe.image_processor = parts["image_processor"]
        return pipe

    @classmethod
    def architecture(cls, config: WanConfig) -> dict:
        """The release's parts without weights (the memory planner's full-size model): text-to-video kinds."""
        return components.architecture(config.kind)

    def component(self, name: str):
        if isinstance(self.transformer, WanExperts) and name in ("transformer", "transformer_2"):
            return self.transformer.high if name == "transformer" else self.transformer.low
        return getattr(self, name)

    def index_config(self) -> dict:
        """model_index.json's pipeline config (diffusers' register_to_config of WanPipeline)."""
        c = self.config.checkpoint
        return {"boundary_ratio": c.boundary_ratio, "expand_timesteps": c.expand_timesteps}

    @property
    def experts(self) -> tuple:
        t = self.transformer
        return t.experts if isinstance(t, WanExperts) else (t,)

    # ---- generate(): the request's image and the low-noise expert's scale are Wan's own ----------------------
    @torch.inference_mode()
    def generate(self, prompt, negative_prompt: str | None = None, seed: int = 0, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, guidance_scale_2: float | None = None, image=None):
        """Videos for `prompt`: (B, T, H, W, 3) uint8 in `.video`. `image` (a path, PIL image or (H, W, 3) array):
        the first frame, required by the I2V releases, optional for TI2V-5B. `guidance_scale_2`: the low-noise
        expert's CFG scale (Wan2.2 A14B). None takes the config's value."""
        return self.run_generation(prompt, seed, dict(
            negative_prompt=negative_prompt, num_frames=num_frames, height=height, width=width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            guidance_scale_2=guidance_scale_2, image=image))

    def prepare_prompts(self, prompts):
        return [prompt_clean(p) for p in prompts]

    def prepare_run(self, run, prompt) -> None:
        """The image's conditioning, before the noise (drawn after, from the same generator: no draws here)."""
        if run.values["image"] is not None:
            conditioning.prepare_image(self, run, load_image(run.values["image"]))

    def encode_prompt(self, prompts, negative_prompt, do_cfg):
        """(B, 512, C) UMT5 states, each prompt's padding zeroed (diffusers' _get_t5_prompt_embeds); [uncond; cond]."""
        def encode(texts, name="prompt"):
            text_stack.warn_if_cut(self.tokenizer, texts, self.config.max_text_length, name)
            tokens = self.tokenizer(texts, padding="max_length", max_length=self.config.max_text_length,
                                    truncation=True, add_special_tokens=True, return_attention_mask=True,
                                    return_tensors="pt")
            device = self.text_encoder.device
            ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
            states = self.text_encoder(ids, mask).last_hidden_state
            return states.masked_fill(~mask.bool()[..., None], 0)

        states = encode(prompts)
        if do_cfg:
            states = torch.cat([encode([prompt_clean(negative_prompt)] * len(prompts), "negative_prompt"), states])
        return states.to(device=self.device, dtype=self.dtype)

    def latent_shape(self, run):
        v, vae = run.values, self.vae.config
        return (len(run.prompts), vae.z_dim, (v["num_frames"] - 1) // vae.scale_factor_temporal + 1,
                v["height"] // vae.scale_factor_spatial, v["width"] // vae.scale_factor_spatial)

    def initial_latents(self, run):
        """fp32 noise, kept fp32 through the scheduler as diffusers does (the model sees its dtype)."""
        noise = torch.randn(self.latent_shape(run), generator=run.generator, dtype=torch.float32)
        return noise.to(self.device) * self.scheduler.init_noise_sigma

    def guidance_scales(self, run):
        """One scale per step: the high-noise expert's, then the low-noise one's."""
        if not isinstance(self.transformer, WanExperts):
            return run.guidance_scale
        low = run.values.get("guidance_scale_2")
        low = self.config.guidance_scale_2 if low is None else low
        boundary = self.transformer.boundary_timestep
        return [run.guidance_scale if float(t) >= boundary else low for t in run.timesteps]

    def predict(self, run, model_in, i, t, text):
        if isinstance(self.transformer, WanExperts):
            self.transformer.select(float(t))
        x, timestep = conditioning.model_input(self, run, model_in, run.model_timesteps[i])
        image = run.state.get("image_embeds")
        if image is not None:
            image = image.expand(model_in.shape[0], -1, -1)
        return self.transformer(x.to(self.dtype), timestep, text, image)

    def step(self, run, pred, i, t, latents):
        return self.scheduler.step(pred.float(), t, latents, return_dict=False)[0]

    def sample_video(self, run, latents):
        return conditioning.final_latents(run, super().sample_video(run, latents))

    def decode(self, latents):
        """Normalised latents -> (B, T, H, W, 3) uint8 (diffusers: latents / (1 / std) + mean, then the VAE)."""
        vae = self.vae
        mean, std = latents_stats(vae, latents)
        video = vae.decode(latents.to(vae.dtype) / (1.0 / std) + mean).sample  # diffusers' exact arithmetic
        return self.to_frames(video)


def latents_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latents mean and std, shaped (1, C, 1, 1, 1) on `like`'s device, in the VAE's dtype."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, vae.dtype)
    std = torch.tensor(vae.config.latents_std).view(shape).to(like.device, vae.dtype)
    return mean, std
