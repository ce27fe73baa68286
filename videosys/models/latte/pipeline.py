"""Latte text-to-video: LatteConfig (published defaults, `tiny` preset) and LattePipeline.

Components in the maxin-cn/Latte-1 (diffusers) layout: transformer/, vae/ (AutoencoderKL,
decoded per frame), text_encoder/ + tokenizer/ (T5, 120 tokens), scheduler/ (DDIM).
"""

import os
from dataclasses import dataclass

import torch

from videosys.core.config import BaseConfig
from videosys.core.pipeline import VideoSysPipeline
from videosys.models.latte.cache_settings import CACHE_SETTINGS
from videosys.models.latte.transformer import LatteTransformer3DModel, LatteTransformerConfig
from videosys.utils import text as text_stack
from videosys.models.modules.pretrained import load_pretrained
from videosys.utils.hub import resolve_dir

TINY_TEXT_DIM = 32
_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "assets")
# the trained demo model (scripts/train_demo.py): the tiny architecture, trained on procedural clips
DEMO_PATH = os.path.join(_ASSETS, "demo-latte")
# its Skip-DiT fine-tune (4 units with skip branches, scripts/train_demo.py --skip-connections): Skip-Cache runs
DEMO_SKIP_PATH = os.path.join(_ASSETS, "demo-latte-skip")


@dataclass
class LatteConfig(BaseConfig):
    """Latte generation config. `LatteConfig()` is Latte-1 (16x512x512, 50 DDIM steps, cfg 7.5, 8 fps);
    `LatteConfig(preset="tiny")` is a small random model that runs on a CPU in seconds;
    `LatteConfig(preset="tiny-skip")` is a random 4-unit model with Skip-DiT skip branches (Skip-Cache runs);
    `LatteConfig(preset="demo")` is the same architecture trained on coloured shapes moving across
    plain backgrounds ("a red circle moving to the right"), shipped in videosys/assets/demo-latte;
    `LatteConfig(preset="demo-skip")` is its Skip-DiT fine-tune (4 units, skip branches), shipped in
    videosys/assets/demo-latte-skip."""

    # DDIM with Latte's training noise schedule (linear betas 1e-4..0.02)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    max_text_length: int = 120
    mask_feature: bool = True  # published: text tokens cut to the prompt's length, no cross-attn mask
    decode_chunk_size: int = 16  # frames per VAE decode call
    enable_temporal_attentions: bool = True
    # Skip-DiT: the transformer from a training checkpoint (Latte-skip.pt) instead of model_path's transformer/,
    # the rest (VAE, text, scheduler) from model_path, as the authors' sampling configs (pretrained + Latte-0)
    skip_dit_checkpoint: str | None = None

    model_name = "latte"
    cache_settings = CACHE_SETTINGS  # cache_settings.py: the published settings of each cache method
    official_model_path = "maxin-cn/Latte-1"
    defaults = dict(num_frames=16, height=512, width=512, num_inference_steps=50, guidance_scale=7.5, fps=8)
    presets = {"tiny": dict(num_frames=16, height=64, width=64, num_inference_steps=50, guidance_scale=7.5, fps=8),
               "tiny-skip": dict(num_frames=16, height=64, width=64, num_inference_steps=50, guidance_scale=7.5, fps=8),
               "demo": dict(num_frames=16, height=64, width=64, num_inference_steps=50, guidance_scale=7.5, fps=8),
               "demo-skip": dict(num_frames=16, height=64, width=64, num_inference_steps=50, guidance_scale=7.5,
                                 fps=8)}

    def check_request(self, values: dict) -> dict:
        """BaseConfig's checks, then the size grid: height / width divisible by the VAE's downsampling times
        the transformer's patch size (a local checkpoint's config.json says; else Latte's 8 x 2)."""
        values = super().check_request(values)
        folder = self.checkpoint_folder()
        patch = self.transformer_config_value("patch_size", folder) or 2
        self.check_divisible(values, self.vae_downsampling(folder) * patch, "VAE downsampling x patch size")
        return values

    def skip_branches(self) -> bool | None:
        """The Skip-DiT presets and checkpoints have skip branches; a local folder's config.json says; a hub id
        not downloaded: unknown (checked when the weights load)."""
        if self.skip_dit_checkpoint is not None or self.preset in ("tiny-skip", "demo-skip") and self.model_path is None:
            return True
        if self.preset in ("tiny", "demo") and self.model_path is None:
            return False
        folder = self.checkpoint_folder()
        if folder and os.path.isdir(folder):
            return bool(self.transformer_config_value("skip_connections", folder))
        return None

    def checkpoint_folder(self) -> str | None:
        """The checkpoint's folder without the existence check (`checkpoint` raises for a missing demo)."""
        return self._demo_path() or self.model_path

    def _demo_path(self) -> str | None:
        """The shipped folder of a trained preset ("demo", "demo-skip") when no model_path overrides it."""
        if self.model_path is not None:
            return None
        return {"demo": DEMO_PATH, "demo-skip": DEMO_SKIP_PATH}.get(self.preset)

    def checkpoint(self) -> str | None:
        """The folder or hub id to load; None for the random `tiny` presets."""
        folder = self._demo_path()
        if folder is None:
            return self.model_path
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"the {self.preset} checkpoint is missing from {folder} (reinstall videosys, "
                                    "or train it: python scripts/train_demo.py --output <folder>, see its docstring)")
        return folder

    def cache_models(self) -> tuple[str, ...]:
        """The shipped demo models have their own calibrated numbers (MagCache's ratios), else Latte's."""
        demo = self._demo_path()
        return (f"latte-{self.preset}", "latte") if demo is not None else ("latte",)

    def prompt_vocabulary(self) -> frozenset[str] | None:
        if self._demo_path() is not None:
            from videosys.utils.demo_data import caption_words

            return caption_words()
        return None

    @property
    def pipeline_cls(self):
        return LattePipeline


def tiny_components(seed: int = 0, skip_connections: bool = False):
    """Transformer, VAE and text stack of the `tiny` preset: Latte's classes, small widths, random weights.
    `skip_connections`: the `tiny-skip` preset, 4 units with Skip-DiT branches (a cached step runs 2 of them)."""
    from diffusers import AutoencoderKL

    tokenizer = text_stack.build_tiny_tokenizer(LatteConfig.max_text_length)
    text_encoder = text_stack.build_tiny_text_encoder(len(tokenizer), d_model=TINY_TEXT_DIM, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = LatteTransformer3DModel(LatteTransformerConfig(
            num_attention_heads=4, attention_head_dim=16, num_layers=4 if skip_connections else 2,
            cross_attention_dim=64, caption_channels=TINY_TEXT_DIM, sample_size=8, video_length=16,
            skip_connections=skip_connections))
        vae = AutoencoderKL(
            block_out_channels=(16, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
    return transformer.eval(), vae.eval(), text_encoder, tokenizer


def load_transformer(path: str, skip_dit_checkpoint: str | None, dtype: torch.dtype) -> LatteTransformer3DModel:
    """path's transformer/, or its architecture with skip branches and the weights of a Skip-DiT checkpoint."""
    if skip_dit_checkpoint is None:
        return LatteTransformer3DModel.from_pretrained(path, "transformer", dtype=dtype)
    import dataclasses
    import json

    from videosys.models.modules.pretrained import config_from_dict

    with open(os.path.join(resolve_dir(path, "transformer"), "config.json")) as f:
        base = config_from_dict(LatteTransformerConfig, json.load(f))
    return LatteTransformer3DModel.from_skip_dit(skip_dit_checkpoint, dataclasses.replace(base, skip_connections=True),
                                                 dtype=dtype)


class LattePipeline(VideoSysPipeline):
    pipeline_class_name = "LattePipeline"
    progress_name = "latte"
    per_sample_seeds = True  # DDIM (eta 0) draws nothing after the first noise

    @classmethod
    def from_config(cls, config: LatteConfig, parts: dict | None = None) -> "LattePipeline":
        """`parts`: the components given (the planner's weightless full-size ones: `architecture`), else loaded."""
        from diffusers import AutoencoderKL, DDIMScheduler

        dtype = config.torch_dtype()
        schedule = dict(beta_start=config.beta_start, beta_end=config.beta_end, beta_schedule=config.beta_schedule,
                        clip_sample=False)
        path = config.checkpoint() if parts is None else None
        if parts is not None:
            transformer, vae, text_encoder, tokenizer = (parts[k] for k in ("transformer", "vae", "text_encoder",
                                                                            "tokenizer"))
            scheduler = DDIMScheduler(num_train_timesteps=1000, **schedule)
        elif path is None:  # tiny preset, random weights
            transformer, vae, text_encoder, tokenizer = tiny_components(skip_connections=config.preset == "tiny-skip")
            scheduler = DDIMScheduler(num_train_timesteps=1000, **schedule)
        else:
            transformer = load_transformer(path, config.skip_dit_checkpoint, dtype)
            vae = load_pretrained(AutoencoderKL, resolve_dir(path, "vae"), torch_dtype=dtype)
            tokenizer, text_encoder = text_stack.load_text_stack(path, dtype, "cpu")
            scheduler = DDIMScheduler.from_pretrained(resolve_dir(path, "scheduler"), **schedule)
        return cls.assemble(config, transformer, vae, text_encoder, tokenizer, scheduler)

    @classmethod
    def architecture(cls, config: LatteConfig) -> dict:
        """Latte-1's parts without weights (the memory planner's full-size model)."""
        from videosys.models.modules import architectures

        return dict(transformer=LatteTransformer3DModel(LatteTransformerConfig()), vae=architectures.sd_vae(),
                    text_encoder=architectures.t5_xxl_encoder(),
                    tokenizer=text_stack.build_tiny_tokenizer(config.max_text_length))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_prompt(self, prompts: list[str], negative_prompt: str, do_cfg: bool):
        """Text states laid out [uncond; cond] and a cross-attention mask (None when nothing is masked).

        As published (mask_feature, see text_stack.encode_text_cut): tokens cut to the longest prompt's length.
        Without mask_feature the model attends to all max_text_length tokens, unmasked.
        """
        max_len = self.config.max_text_length
        if self.config.mask_feature:
            cond, mask = text_stack.encode_text_cut(self.tokenizer, self.text_encoder, prompts, negative_prompt,
                                                    max_len, self.device, do_cfg)
            return cond.to(self.dtype), mask
        cond, _ = text_stack.encode_text(self.tokenizer, self.text_encoder, prompts, max_len, self.device)
        if do_cfg:
            uncond, _ = text_stack.encode_text(self.tokenizer, self.text_encoder, [negative_prompt] * len(prompts),
                                               max_len, self.device, "negative_prompt")
            cond = torch.cat([uncond, cond])
        return cond.to(self.dtype), None

    # ---- generate()'s hooks (VideoSysPipeline.run_generation) -------------------------------------
    def latent_shape(self, run) -> tuple[int, ...]:
        v = run.values
        return (len(run.prompts), self.transformer.config.in_channels, v["num_frames"],
                v["height"] // self.vae_scale_factor, v["width"] // self.vae_scale_factor)  # (B, C, F, h, w)

    def predict(self, run, model_in, i, t, text, mask):
        pred = self.transformer(model_in, run.model_timesteps[i], text, mask,
                                enable_temporal_attentions=self.config.enable_temporal_attentions)
        return pred[:, :self.transformer.config.in_channels]  # epsilon; the other half is the learned variance

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) latents -> (B, F, H, W, 3) uint8, the VAE run frame by frame in chunks."""
        b, c, f, h, w = latents.shape
        frames = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / self.vae.config.scaling_factor
        chunk = max(1, self.config.decode_chunk_size)
        images = torch.cat([self.vae.decode(frames[i:i + chunk].to(self.vae.dtype)).sample
                            for i in range(0, b * f, chunk)])
        video = images.view(b, f, *images.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, 3, F, H, W)
        return self.to_frames(video)
