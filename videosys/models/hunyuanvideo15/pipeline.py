"""HunyuanVideo-1.5 text- and image-to-video: HunyuanVideo15Config (published defaults per checkpoint, the `tiny` /
`tiny-i2v` presets, request checks) and HunyuanVideo15Pipeline.

Checkpoints in the diffusers layout (hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-*): transformer/ (ours,
transformer.py), vae/ (AutoencoderKLHunyuanVideo15: 16x spatial, 4x temporal), scheduler/
(FlowMatchEulerDiscreteScheduler with the release's shift), text_encoder/ + tokenizer/ (Qwen2.5-VL's language
model), text_encoder_2/ + tokenizer_2/ (ByT5 glyph encoder), and for I2V image_encoder/ + feature_extractor/
(SigLIP). How the inputs are built: text.py.

The transformer's 65 input channels are [noisy latents (32); condition latents (32); mask (1)]: T2V gives zeros
for both; I2V gives the first frame's VAE latents (mode of the posterior, times the scaling factor) at latent
frame 0 and a mask of ones there, and SigLIP's tokens of the same image.
"""

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from videosys.core.config import BaseConfig, RequestError, check_media_file
from videosys.core.pipeline import VideoSysPipeline
from videosys.models.hunyuanvideo15 import text as hv_text
from videosys.models.hunyuanvideo15 import tiny
from videosys.models.hunyuanvideo15.cache_settings import CACHE_SETTINGS
from videosys.models.hunyuanvideo15.transformer import HunyuanVideo15Transformer3DModel, HunyuanVideo15TransformerConfig
from videosys.models.modules.pretrained import load_pretrained
from videosys.utils.hub import resolve_dir

HUB = "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-"  # + checkpoint name (release README, Usage with Diffusers)
# Published defaults per checkpoint: guidance and flow shift from the release README's table "optimal inference
# configurations" (Tencent-Hunyuan/HunyuanVideo-1.5 at 60783e7); 50 steps, 121 frames (`--video_length`) and 24 fps
# (generate.py's imageio.mimwrite) likewise. T2V size: the 16:9 bucket of the transformer's target_size (640 ->
# 480x848, 960 -> 720x1280), as diffusers' HunyuanVideo15Pipeline and the release's `--aspect_ratio 16:9`;
# I2V size: the bucket closest to the image's aspect ratio (height / width None here: chosen per image).
# The step-distilled model: "8 or 12 (recommended)" steps; its diffusers repo name follows the collection's
# pattern (not checked: no hub access here).
CHECKPOINTS = {
    "480p_t2v": dict(task="t2v", height=480, width=848, flow_shift=5.0, guidance_scale=6.0, num_inference_steps=50),
    "480p_i2v": dict(task="i2v", flow_shift=5.0, guidance_scale=6.0, num_inference_steps=50),
    "720p_t2v": dict(task="t2v", height=720, width=1280, flow_shift=9.0, guidance_scale=6.0, num_inference_steps=50),
    "720p_i2v": dict(task="i2v", flow_shift=7.0, guidance_scale=6.0, num_inference_steps=50),
    "480p_t2v_distilled": dict(task="t2v", height=480, width=848, flow_shift=5.0, guidance_scale=1.0,
                               num_inference_steps=50),
    "480p_i2v_distilled": dict(task="i2v", flow_shift=5.0, guidance_scale=1.0, num_inference_steps=50),
    "720p_i2v_distilled": dict(task="i2v", flow_shift=7.0, guidance_scale=1.0, num_inference_steps=50),
    "480p_i2v_step_distilled": dict(task="i2v", flow_shift=7.0, guidance_scale=1.0, num_inference_steps=12),
}
COMMON = dict(num_frames=121, fps=24, max_text_length=hv_text.MAX_TEXT_LENGTH,
              max_glyph_length=hv_text.MAX_GLYPH_LENGTH)
TINY = dict(num_frames=5, num_inference_steps=8, guidance_scale=6.0, fps=24, flow_shift=5.0, max_text_length=48,
            max_glyph_length=32)
PER_CHECKPOINT = ("height", "width", "num_inference_steps", "guidance_scale", "flow_shift")
VAE_SPATIAL, VAE_TEMPORAL = 16, 4  # the release's VAE


def checkpoint_name(model_path: str | None) -> str | None:
    """The CHECKPOINTS key a hub id or folder name ends with (longest match), else None."""
    name = os.path.basename(os.path.normpath(model_path or ""))
    found = [key for key in CHECKPOINTS if name.endswith(key)]
    return max(found, key=len) if found else None


@dataclass
class HunyuanVideo15Config(BaseConfig):
    """HunyuanVideo-1.5. `HunyuanVideo15Config()` is the 480p T2V release (121 frames at 480x848, 50 steps, cfg 6,
    flow shift 5); model_path picks another (…-Diffusers-720p_i2v, a local folder). I2V needs `image` (a path, or a
    PIL image passed to generate()). `preset="tiny"` / `"tiny-i2v"`: small random models for a CPU."""

    image: str | None = None  # I2V: the first frame (a file path); generate(image=...) overrides it
    flow_shift: float | None = None  # None: the checkpoint's published shift (the scheduler config's for a folder)
    max_text_length: int | None = None  # LLM tokens after the chat template's prefix (None: the release's 1000)
    max_glyph_length: int | None = None  # ByT5 tokens (None: the release's 256)
    vae_tiling: bool = True  # as the release README's diffusers example (pipe.vae.enable_tiling())

    model_name = "hunyuanvideo-1.5"
    official_model_path = HUB + "480p_t2v"
    cache_settings = CACHE_SETTINGS
    # the 480p T2V release's; a named checkpoint's replace them (__post_init__); a local folder whose name is not a
    # checkpoint's keeps these (a distilled one: pass guidance_scale=1.0) and takes its scheduler's shift
    defaults = {**COMMON, **{k: v for k, v in CHECKPOINTS["480p_t2v"].items() if k not in ("task", "flow_shift")}}
    presets = {"tiny": dict(TINY, height=48, width=80),  # the 16:9 bucket of target_size 64
               "tiny-i2v": dict(TINY)}

    def __post_init__(self):
        unset = {name for name in PER_CHECKPOINT if getattr(self, name) is None}  # before the defaults fill them
        super().__post_init__()
        published = CHECKPOINTS.get(checkpoint_name(self.model_path)) if self.preset is None else None
        for name in unset:
            if published is not None:  # a named checkpoint's own defaults
                setattr(self, name, published.get(name))
            elif name in ("height", "width") and self.task == "i2v":  # an I2V folder: the image's bucket
                setattr(self, name, None)

    @property
    def task(self) -> str:
        """"t2v" or "i2v": from the preset, the checkpoint's name, else its transformer config (task_type)."""
        if self.preset is not None:
            return "i2v" if self.preset == "tiny-i2v" else "t2v"
        name = checkpoint_name(self.model_path)
        if name is not None:
            return CHECKPOINTS[name]["task"]
        return self.transformer_config_value("task_type") or "t2v"

    def spatial_factor(self) -> int:
        """Sizes must divide by the VAE's spatial compression times the transformer's patch (16 x 1 released)."""
        folder = self.model_path if self.model_path and os.path.isdir(self.model_path) else None
        if folder is None:
            return VAE_SPATIAL
        vae = self.transformer_config_value("spatial_compression_ratio", os.path.join(folder, "vae"))
        return (vae or VAE_SPATIAL) * (self.transformer_config_value("patch_size") or 1)

    def sp_heads(self) -> int | None:
        if self.preset is not None:
            return tiny.transformer_config("t2v").num_attention_heads
        return self.transformer_config_value("num_attention_heads") or 16

    def cache_models(self) -> tuple[str, ...]:
        name = checkpoint_name(self.model_path)
        return (f"hunyuanvideo-1.5-{name}", self.model_name) if name else (self.model_name,)

    def check_request(self, values: dict) -> dict:
        """BaseConfig's checks, then the VAE's grids: num_frames 4k + 1 (the VAE keeps the first frame and
        compresses the rest 4x), height / width divisible by 16 (the VAE's 16x times the patch 1); I2V needs an
        image, T2V refuses one (its transformer was not trained with it)."""
        out = super().check_request(values)
        if (out["num_frames"] - 1) % VAE_TEMPORAL:
            raise RequestError("num_frames", f"num_frames={out['num_frames']} must be 4k + 1 (1, 5, ..., 121): the "
                               "VAE keeps the first frame and compresses the rest 4x")
        if (out.get("height") is None) != (out.get("width") is None):
            raise RequestError("height", "give both height and width, or neither (I2V: the image's bucket)")
        if out.get("height") is not None:
            self.check_divisible(out, self.spatial_factor(), "the VAE's 16x spatial compression times patch 1")
        if out.get("height") is None and self.task == "t2v":
            raise RequestError("height", "text-to-video needs height and width")
        out["image"] = out.get("image") if out.get("image") is not None else self.image
        if self.task == "i2v" and out["image"] is None and not self.checking_own_values:  # each call gives it
            raise RequestError("image", f"{self.model_path or self.preset} is an image-to-video model: give image= "
                               "(the first frame: a file path or a PIL image)")
        if self.task == "t2v" and out["image"] is not None:
            raise RequestError("image", "this is a text-to-video checkpoint: it takes no image (use an i2v one)")
        if isinstance(out["image"], str) and not os.path.isfile(out["image"]):
            raise RequestError("image", f"image={out['image']!r}: no such file")
        if isinstance(out["image"], str):
            check_media_file(out["image"], "image")  # an image Pillow reads, before any model work
        return out

    @property
    def pipeline_cls(self):
        return HunyuanVideo15Pipeline


def image_processor(spatial_factor: int):
    """diffusers' HunyuanVideo15ImageProcessor: the release's size buckets, crop-resize and [-1, 1] pixels."""
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

    return HunyuanVideo15ImageProcessor(vae_scale_factor=spatial_factor, do_resize=False, do_convert_rgb=True)


def load_image(image):
    """A PIL image, or a file path opened as one (RGB)."""
    from PIL import Image

    return Image.open(image).convert("RGB") if isinstance(image, (str, os.PathLike)) else image


class HunyuanVideo15Pipeline(VideoSysPipeline):
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "text_encoder_2", "tokenizer_2",
                  "image_encoder", "feature_extractor")
    pipeline_class_name = "HunyuanVideo15Pipeline"
    progress_name = "hunyuanvideo-1.5"

    @classmethod
    def architecture(cls, config: HunyuanVideo15Config) -> dict:
        """The text-to-video release's parts without weights (the memory planner's full-size model): the
        transformer (480p / 720p bucket), its VAE, Qwen2.5-VL-7B's language model, the ByT5-small glyph encoder.
        The tokenizers are the tiny preset's (no files; the planner needs only token counts)."""
        from diffusers import AutoencoderKLHunyuanVideo15
        from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

        if config.task != "t2v":
            raise ValueError("the memory planner covers HunyuanVideo-1.5's text-to-video releases, not i2v, yet")
        tokenizer = tiny.qwen_tokenizer()
        tokenizer_2, _ = tiny.byt5()
        qwen = Qwen2_5_VLTextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                    num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                     "mrope_section": [16, 24, 24]})
        # Glyph-SDXL-v2's ByT5-small: the vocabulary size is not checked offline (bytes + glyph tokens; a few MB)
        glyph = T5Config(vocab_size=1510, d_model=1472, d_kv=64, d_ff=3584, num_layers=12, num_heads=6,
                         feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
        target = 960 if "720" in (config.model_path or "") else 640
        return dict(transformer=HunyuanVideo15Transformer3DModel(HunyuanVideo15TransformerConfig(target_size=target)),
                    vae=AutoencoderKLHunyuanVideo15(), text_encoder=Qwen2_5_VLTextModel(qwen).eval(),
                    tokenizer=tokenizer, text_encoder_2=T5EncoderModel(glyph).eval(), tokenizer_2=tokenizer_2)

    @classmethod
    def from_config(cls, config: HunyuanVideo15Config, parts: dict | None = None) -> "HunyuanVideo15Pipeline":
        """`parts`: the components given (the planner's weightless full-size ones: `architecture`), else loaded."""
        from diffusers import AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler

        dtype, i2v = config.torch_dtype(), config.task == "i2v"
        feature_extractor = image_encoder = None
        if parts is not None:
            transformer, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2 = (parts[k] for k in (
                "transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"))
            scheduler_config = {}
        elif config.model_path is None:  # tiny preset, random weights
            tokenizer = tiny.qwen_tokenizer()
            text_encoder, (tokenizer_2, text_encoder_2) = tiny.qwen_text_model(tokenizer), tiny.byt5()
            if i2v:
                feature_extractor, image_encoder = tiny.siglip()
            transformer, vae = tiny.transformer(config.task), tiny.vae()
            scheduler_config = {}
        else:
            from transformers import (AutoTokenizer, ByT5Tokenizer, Qwen2_5_VLTextModel, SiglipImageProcessor,
                                      SiglipVisionModel, T5EncoderModel)

            path = config.model_path
            transformer = HunyuanVideo15Transformer3DModel.from_pretrained(path, "transformer", dtype=dtype)
            vae = load_pretrained(AutoencoderKLHunyuanVideo15, resolve_dir(path, "vae"), torch_dtype=dtype)
            tokenizer = load_pretrained(AutoTokenizer, resolve_dir(path, "tokenizer"))
            text_encoder = load_pretrained(Qwen2_5_VLTextModel, resolve_dir(path, "text_encoder"), dtype=dtype)
            tokenizer_2 = load_pretrained(ByT5Tokenizer, resolve_dir(path, "tokenizer_2"))
            text_encoder_2 = load_pretrained(T5EncoderModel, resolve_dir(path, "text_encoder_2"), dtype=dtype)
            if i2v:
                feature_extractor = load_pretrained(SiglipImageProcessor, resolve_dir(path, "feature_extractor"))
                image_encoder = load_pretrained(SiglipVisionModel, resolve_dir(path, "image_encoder"), dtype=dtype)
            scheduler_config = dict(FlowMatchEulerDiscreteScheduler.load_config(resolve_dir(path, "scheduler")))
        if config.flow_shift is not None:
            scheduler_config["shift"] = config.flow_shift
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        if config.vae_tiling:
            vae.enable_tiling()
        # one video at a time: the VAE's mid-block attention builds its causal mask for batch 1 (a batch of two
        # fails in diffusers' AutoencoderKLHunyuanVideo15), and a batch saves no decoding time anyway
        vae.enable_slicing()
        pipe = cls.assemble(config, transformer, vae, text_encoder, tokenizer, scheduler)
        device = pipe.device
        pipe.text_encoder_2, pipe.tokenizer_2 = text_encoder_2.to(device=device, dtype=pipe.dtype), tokenizer_2
        pipe.feature_extractor = feature_extractor
        pipe.image_encoder = None if image_encoder is None else image_encoder.to(device=device, dtype=pipe.dtype)
        if i2v:  # model_index.json's class: diffusers loads the folder with its I2V pipeline
            pipe.pipeline_class_name = "HunyuanVideo15ImageToVideoPipeline"
        pipe.components = tuple(name for name in cls.components if getattr(pipe, name) is not None)  # T2V: no SigLIP
        pipe.crop_start = hv_text.template_prefix_length(tokenizer)
        if len(tokenizer) > 100_000 and pipe.crop_start != hv_text.RELEASE_CROP_START:  # Qwen2.5-VL's, not a tiny one
            warnings.warn(f"the chat template's prefix is {pipe.crop_start} tokens with this tokenizer, not the "
                          f"release's {hv_text.RELEASE_CROP_START}: the text states are cut where this tokenizer's "
                          "prompt starts", stacklevel=2)
        return pipe

    @property
    def vae_spatial_factor(self) -> int:
        return int(self.vae.spatial_compression_ratio)

    @property
    def vae_temporal_factor(self) -> int:
        return int(self.vae.temporal_compression_ratio)

    @torch.inference_mode()
    def generate(self, prompt, negative_prompt: str | None = None, seed: int = 0, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, image: str | None = None):
        """Videos for `prompt` (a string or a list): (B, T, H, W, 3) uint8 in `.video`. `image`: I2V's first frame
        (a file path or a PIL image; None: the config's); I2V without height / width: the release's size bucket
        closest to the image's aspect ratio (the image is resized and centre-cropped to the size)."""
        return self.run_generation(prompt, seed, dict(
            negative_prompt=negative_prompt, num_frames=num_frames, height=height, width=width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, image=image))

    # ---- generate()'s hooks (VideoSysPipeline.run_generation) -------------------------------------
    def prepare_run(self, run, prompt) -> None:
        """The condition latents, mask and image tokens: zeros / None for T2V; I2V encodes its image (and picks the
        size from it when none was asked)."""
        v, b = run.values, len(run.prompts)
        image_embeds = None
        if v["image"] is not None:
            image = load_image(v["image"])
            processor = image_processor(self.vae_spatial_factor)
            if v["height"] is None:
                v["height"], v["width"] = processor.calculate_default_height_width(
                    image.size[1], image.size[0], self.transformer.config.target_size)
            image = processor.resize(image, height=v["height"], width=v["width"], resize_mode="crop")
            image_embeds = hv_text.encode_image(self.feature_extractor, self.image_encoder, image, self.device)
            image_embeds = image_embeds.to(self.dtype).expand(b, -1, -1)
        shape = self.latent_shape(run)
        cond = torch.zeros(shape, dtype=self.dtype, device=self.device)
        mask = torch.zeros((shape[0], 1, *shape[2:]), dtype=self.dtype, device=self.device)
        if v["image"] is not None:
            pixels = processor.preprocess(image, height=v["height"], width=v["width"])
            pixels = pixels.to(self.device, dtype=self.vae.dtype).unsqueeze(2)  # (1, 3, 1, H, W)
            latents = self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor
            cond[:, :, :1] = latents.to(self.dtype)  # the first latent frame; the others stay zero
            mask[:, :, 0] = 1.0
        run.conditioning = (torch.cat([cond, mask], dim=1), image_embeds)

    def encode_prompt(self, prompts: list[str], negative_prompt: str, do_cfg: bool) -> tuple:
        """(LLM states, mask, ByT5 states, mask), each laid out [uncond; cond] with CFG."""
        def encode(texts):
            llm = hv_text.encode_llm(self.tokenizer, self.text_encoder, texts, self.config.max_text_length,
                                     self.crop_start, self.device)
            glyphs = hv_text.encode_glyphs(self.tokenizer_2, self.text_encoder_2, texts, self.config.max_glyph_length,
                                           self.device)
            return (*llm, *glyphs)

        parts = encode(prompts)
        if do_cfg:
            parts = tuple(torch.cat([u, c]) for u, c in zip(encode([negative_prompt] * len(prompts)), parts))
        states, mask, glyphs, glyph_mask = parts
        return states.to(self.dtype), mask, glyphs.to(self.dtype), glyph_mask

    def latent_shape(self, run) -> tuple[int, ...]:
        v = run.values
        frames = (v["num_frames"] - 1) // self.vae_temporal_factor + 1
        return (len(run.prompts), self.vae.config.latent_channels, frames, v["height"] // self.vae_spatial_factor,
                v["width"] // self.vae_spatial_factor)  # (B, C, F, h, w)

    def initial_latents(self, run) -> torch.Tensor:
        """Unit noise from the run's generator (flow matching starts at sigma 1: no scaling)."""
        return torch.randn(self.latent_shape(run), generator=run.generator, dtype=torch.float32).to(self.device,
                                                                                                    self.dtype)

    def begin_sampling(self, run, num_steps: int) -> torch.Tensor:
        """The release's schedule: sigmas evenly spaced from 1 (num_steps of them, 0 left out), shifted by the
        scheduler's flow shift (diffusers' HunyuanVideo15Pipeline passes the same sigmas)."""
        self.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1])
        run.timesteps = self.scheduler.timesteps
        run.model_timesteps = run.timesteps.to(self.device)
        # MeanFlow checkpoints also see the next step's timestep (0 after the last): the release's pipeline
        # (hyvideo/pipelines/hunyuan_video_pipeline.py) does so for T2V and I2V; diffusers' I2V pipeline likewise
        run.state["next_timesteps"] = torch.cat([run.model_timesteps[1:], run.model_timesteps.new_zeros(1)])
        return run.timesteps

    def predict(self, run, model_in, i, t, states, mask, glyphs, glyph_mask):
        b = model_in.shape[0]
        condition, image_embeds = run.conditioning
        model_in = torch.cat([model_in, condition.repeat(b // condition.shape[0], 1, 1, 1, 1)], dim=1)
        if image_embeds is not None:
            image_embeds = image_embeds.repeat(b // image_embeds.shape[0], 1, 1)
        timestep_r = run.state["next_timesteps"][i].expand(b) if self.transformer.config.use_meanflow else None
        return self.transformer(model_in, run.model_timesteps[i].expand(b).to(model_in.dtype), states, mask,
                                timestep_r=timestep_r, encoder_hidden_states_2=glyphs,
                                encoder_attention_mask_2=glyph_mask, image_embeds=image_embeds)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) latents -> (B, T, H, W, 3) uint8, T = 4 (F - 1) + 1 frames."""
        video = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return self.to_frames(video)
