"""LaVie (arXiv 2309.15103, Vchitect/LaVie): LaVieConfig and LaViePipeline, the cascade's base stage.

LaVie is three latent diffusion models run one after another (checkpoints.CASCADE): the base text-to-video model
(16 frames at 320x512), a temporal interpolation model and a video super-resolution model. `stages` says how far
to run: ("base",) by default, a prefix of the cascade on request. A later stage plugs in by one line in
`STAGE_PIPELINES` ("name": "module:Class"): a class with `from_config(config, base)` (base: this pipeline, whose
text encoder it may share) and `refine(out, run) -> VideoSysOutput`, given the previous stage's output and the base
run (its prompts, seed and values); a config naming a stage that is not plugged in is refused when built.

The base stage samples as the release's base/pipelines/sample.py + pipeline_videogen.py (tests/test_lavie.py writes
that loop out and compares):
- text: SD-1.4's CLIP tokenizer padded to 77 tokens, the text encoder's last hidden states, no attention mask;
  CFG's uncond text is the negative prompt ("" by default), laid out [uncond; cond], both in one UNet batch;
- DDPM (sample.yaml: sample_method 'ddpm', 50 steps, linear betas 1e-4..0.02 over 1000 training steps, SD-1.4's
  scheduler config otherwise: clip_sample False, fixed_small variance, epsilon); its timesteps 980, 960, ..., 0 as
  the release's diffusers 0.16.0 spaced them (DDPM had no steps_offset before 0.18.0, #3947; SD-1.4 says 1);
  each step's variance noise is drawn from the seed's generator after the first noise, as the release draws both
  from the global generator its seed sets (torch.manual_seed);
- sample.py's other samplers on request (`sample_method`: "ddim" with eta 0, "eulerdiscrete"), from the same config;
- latents decoded per frame by SD-1.4's VAE after dividing by 0.18215 (pipeline_videogen.py decode_latents).

Caches (docs/models/lavie.md): the module sites, the step output, the CFG branches, and the UNet as the block
stack; TeaCache's indicator is the first ResNet's timestep-modulated input (the UNet has no adaLN: this is where the
timestep first modulates the noisy input, the role the modulated input of a DiT's first block plays for TeaCache's
authors), and its coefficients are ours, calibrated on the tiny model only (cache_settings.py); the released UNet
has none until someone calibrates it (`scripts/calibrate_teacache.py --model lavie`).
"""

import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from videosys.core.config import BaseConfig
from videosys.core.pipeline import VideoSysPipeline
from videosys.models.lavie import checkpoints
from videosys.models.lavie.cache_settings import CACHE_SETTINGS
from videosys.models.lavie.stages import refuse_fitted
from videosys.models.lavie.unet import LaVieUNet3DModel, LaVieUNetConfig
from videosys.models.modules.pretrained import load_pretrained
from videosys.utils import text as text_stack
from videosys.utils.files import atomic_path
from videosys.utils.hub import resolve_dir

LATENT_SCALE = 0.18215  # pipeline_videogen.py decode_latents: `latents = 1 / 0.18215 * latents`
INTERPOLATED_FPS = 24  # interpolation/configs/sample.yaml fps_list: [24]; vsr/sample.py writes at its input's fps
TEXT_LENGTH = 77  # SD-1.4's CLIP tokenizer model_max_length (pipeline_videogen.py pads to it)
# the cascade's later stages: name -> "module:Class" (see the module docstring); the base is this module's pipeline
STAGE_PIPELINES: dict[str, str] = {"interpolation": "videosys.models.lavie.interpolation:LaVieInterpolationStage",
                                   "vsr": "videosys.models.lavie.vsr:LaVieVSRStage"}
SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "eulerdiscrete": "EulerDiscreteScheduler"}
# CompVis/stable-diffusion-v1-4 scheduler/scheduler_config.json (a PNDMScheduler's), which sample.py loads
SD14_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
TINY_UNET = dict(block_out_channels=(64, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, attention_head_dim=2,
                 cross_attention_dim=32)  # 2 heads of 32 channels: the release's 32 rotary channels fit


def parse_stages(value) -> tuple[str, ...]:
    """`stages` as a tuple ("base,interpolation" from a command line, a YAML list), or a ValueError naming it: known
    names only, and a prefix of the cascade (each stage takes the one before it)."""
    names = tuple(s.strip() for s in value.split(",")) if isinstance(value, str) else tuple(value or ())
    unknown = [s for s in names if s not in checkpoints.CASCADE]
    if unknown or not names:
        raise ValueError(f"stages: unknown stage(s) {unknown or names!r}; LaVie's are {', '.join(checkpoints.CASCADE)}")
    if names != checkpoints.CASCADE[:len(names)]:
        options = " or ".join(repr(checkpoints.CASCADE[:n]) for n in range(1, len(checkpoints.CASCADE) + 1))
        raise ValueError(f"stages={names!r} is not a cascade: each stage refines the one before it, so stages must be "
                         f"{options}")
    missing = [s for s in names[1:] if s not in STAGE_PIPELINES]
    if missing:
        raise ValueError(f"stages: the {', '.join(missing)} stage is not available in this install (only "
                         f"{', '.join(('base', *STAGE_PIPELINES))})")
    return names


@dataclass
class LaVieConfig(BaseConfig):
    """LaVie generation config. `LaVieConfig()` is the release's base model (16x320x512, 50 DDPM steps, cfg 7.5,
    8 fps: base/configs/sample.yaml, mp4 fps in sample.py); `model_path` is the release's pretrained_models folder
    or the hub repository of its .pt files (checkpoints.py); `preset="tiny"` is a small random model with an
    offline text stack, for a CPU in seconds."""

    sd_path: str | None = None  # SD-1.4's vae/, text_encoder/, tokenizer/: None = model_path's, else the hub's
    stages: Any = ("base",)  # a prefix of ("base", "interpolation", "vsr"); "base,interpolation" on a command line
    # sample.py's samplers: "ddpm" (sample.yaml's), "ddim", "eulerdiscrete"; each over SD-1.4's scheduler config
    # with sample.yaml's beta schedule (the one the base model was trained with)
    sample_method: str = "ddpm"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    decode_chunk_size: int = 16  # frames per VAE decode call (the release decodes all 16 at once)

    model_name = "lavie"
    official_model_path = checkpoints.HUB_ID
    cache_settings = CACHE_SETTINGS
    defaults = dict(num_frames=16, height=320, width=512, num_inference_steps=50, guidance_scale=7.5, fps=8)
    presets = {"tiny": dict(num_frames=4, height=32, width=32, num_inference_steps=50, guidance_scale=7.5, fps=8)}

    def __post_init__(self):
        self.check_fields()
        self.stages = parse_stages(self.stages)
        if self.fps is None and "interpolation" in self.stages:
            self.fps = INTERPOLATED_FPS  # the interpolated video's rate (VSR keeps its input's)
        if self.sample_method not in SCHEDULERS:
            raise ValueError(f"sample_method must be one of {', '.join(SCHEDULERS)} (the release's sample.py), got "
                             f"{self.sample_method!r}")
        super().__post_init__()
        if len(self.stages) > 1:  # the first later stage is where a fitted method would run on another model
            refuse_fitted(self.cache_configs(), self.stages[1])

    def check_request(self, values: dict) -> dict:
        """BaseConfig's checks, then the size grid: height / width divisible by the VAE's 8 (pipeline_videogen.py
        check_inputs; the UNet takes any latent size, forwarding its skips' sizes to the upsamplers)."""
        values = super().check_request(values)
        self.check_divisible(values, 8, "the VAE's 8x downsampling")
        return values

    def check_launch(self, world: int, spawning: bool) -> None:
        """BaseConfig's checks; no sequence parallelism (a UNet at these sizes): CFG parallel only."""
        from videosys.core.parallel import mesh_shape

        super().check_launch(world, spawning)
        _, sp = mesh_shape(world, self.cfg_parallel)
        if sp > 1:
            raise ValueError(f"LaVie runs no sequence parallelism: num_gpus={world} needs cfg_parallel=True with "
                             "num_gpus=2 (the cond and uncond branches on one process each)")

    def cache_models(self) -> tuple[str, ...]:
        """The tiny random model has its own calibrated numbers (TeaCache's polynomial); the release has none yet."""
        return ("lavie-tiny", "lavie") if self.preset == "tiny" and self.model_path is None else ("lavie",)

    @property
    def pipeline_cls(self):
        return LaViePipeline


def tiny_tokenizer():
    """A real CLIPTokenizer with a byte-level vocabulary built here (one token per byte, no merges: no file)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {}
    for ch in sorted(ByteLevel.alphabet()):  # CLIP's BPE marks a word's last piece with </w>
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH)


def tiny_components(seed: int = 0):
    """The tiny preset: our UNet at small widths, SD's classes for the VAE and CLIP text encoder (small, random), and
    the offline byte-level CLIP tokenizer."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
        vae = AutoencoderKL(block_out_channels=(16, 32, 32, 32), layers_per_block=1, latent_channels=4,
                            norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=32).eval()
        unet = LaVieUNet3DModel(LaVieUNetConfig(**TINY_UNET)).eval()
    return unet, vae, text_encoder, tokenizer


def make_scheduler(config: LaVieConfig):
    """sample.py's `<Scheduler>.from_pretrained(sd_path, subfolder="scheduler", beta_start=..., beta_end=...,
    beta_schedule=...)`: SD-1.4's scheduler config with sample.yaml's betas. DDPM without the steps_offset its config
    gives: the release's diffusers 0.16.0 DDPM had none (see the module docstring)."""
    import inspect

    import diffusers

    cls = getattr(diffusers, SCHEDULERS[config.sample_method])
    values = {**SD14_SCHEDULER, "beta_start": config.beta_start, "beta_end": config.beta_end,
              "beta_schedule": config.beta_schedule}
    if config.sample_method == "ddpm":
        values["steps_offset"] = 0
    accepted = inspect.signature(cls.__init__).parameters  # PNDM's skip_prk_steps is not DDPM's, ...
    return cls.from_config({k: v for k, v in values.items() if k in accepted})


class LaViePipeline(VideoSysPipeline):
    """The base stage (`transformer` is the 3D UNet, as every family's denoiser is named), then `stages`' others."""

    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    pipeline_class_name = "LaViePipeline"
    progress_name = "lavie"
    per_sample_seeds = False  # DDPM draws noise at every step from the one generator

    @classmethod
    def from_config(cls, config: LaVieConfig, parts: dict | None = None) -> "LaViePipeline":
        """`parts`: the components given (the planner's weightless full-size ones: `architecture`), else loaded."""
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        dtype = config.torch_dtype()
        if parts is not None:
            unet, vae, text_encoder, tokenizer = (parts[k] for k in ("unet", "vae", "text_encoder", "tokenizer"))
        elif config.model_path is None:
            unet, vae, text_encoder, tokenizer = tiny_components()
        else:
            sd = checkpoints.sd_components_path(config.model_path, config.sd_path)
            unet_file = checkpoints.release_file(config.model_path, checkpoints.RELEASE_FILES["base"])
            unet = checkpoints.load_unet(unet_file, checkpoints.unet_config(sd if os.path.isdir(sd) else None), dtype)
            vae = load_pretrained(AutoencoderKL, resolve_dir(sd, "vae"), torch_dtype=dtype)
            tokenizer = load_pretrained(CLIPTokenizer, resolve_dir(sd, "tokenizer"))
            text_encoder = load_pretrained(CLIPTextModel, resolve_dir(sd, "text_encoder"), dtype=dtype).eval()
        pipeline = cls.assemble(config, unet, vae, text_encoder, tokenizer, make_scheduler(config))
        pipeline.later_stages = [cls.stage_class(name).from_config(config, pipeline) for name in config.stages[1:]]
        return pipeline

    @classmethod
    def architecture(cls, config: LaVieConfig) -> dict:
        """The release's base-stage parts without weights (the memory planner's full-size model): SD-1.4's."""
        from videosys.models.modules import architectures

        return dict(unet=LaVieUNet3DModel(LaVieUNetConfig()), vae=architectures.sd_vae(),
                    text_encoder=architectures.clip_vit_l_text_encoder(), tokenizer=tiny_tokenizer())

    @staticmethod
    def stage_class(name: str):
        module, attr = STAGE_PIPELINES[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def set_cache(self, cache) -> None:
        """The base UNet's caches, and each later stage's (each counts its own: out.stats "<stage>_<method>")."""
        configs = self.config.resolve_cache(cache)
        if self.later_stages:  # refused before anything changes
            refuse_fitted(configs, self.later_stages[0].name)
        super().set_cache(configs)
        for stage in self.later_stages:
            stage.set_cache(configs)

    def component(self, name: str):
        return self.transformer if name == "unet" else getattr(self, name)

    def save_pretrained(self, folder: str) -> None:
        """The release's layout (checkpoints.py): lavie_base.pt, and stable-diffusion-v1-4/ with vae/,
        text_encoder/, tokenizer/ and the UNet's unet/config.json, which LaVieConfig(model_path=folder) loads."""
        import json

        sd = os.path.join(folder, checkpoints.SD_FOLDER)
        for name in ("vae", "text_encoder", "tokenizer"):
            getattr(self, name).save_pretrained(os.path.join(sd, name))
        with atomic_path(os.path.join(sd, "unet", "config.json"), ".json") as tmp, open(tmp, "w") as f:
            json.dump(dataclasses.asdict(self.transformer.config), f, indent=2)
        checkpoints.save_release_unet(self.transformer, os.path.join(folder, checkpoints.RELEASE_FILES["base"]))
        for stage in self.later_stages:  # lavie_interpolation.pt, lavie_vsr.pt and the x4 upscaler's parts
            stage.save_release(folder)

    # ---- generate()'s hooks (VideoSysPipeline.run_generation) -------------------------------------
    def run_generation(self, prompt, seed: int, request: dict):
        out = super().run_generation(prompt, seed, request)
        for stage in self.later_stages:
            out = stage.refine(out, self.last_run)
        return out

    def prepare_run(self, run, prompt) -> None:
        self.last_run = run  # the later stages read the base run's prompts, seed and values

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_text(self, texts: list[str], name: str) -> torch.Tensor:
        """(B, 77, C) CLIP last hidden states, padded to 77 tokens, no mask (pipeline_videogen.py _encode_prompt)."""
        length = self.tokenizer.model_max_length
        text_stack.warn_if_cut(self.tokenizer, texts, length, name)
        ids = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def encode_prompt(self, prompts: list[str], negative_prompt: str, do_cfg: bool):
        cond = self.encode_text(prompts, "prompt")
        if do_cfg:
            cond = torch.cat([self.encode_text([negative_prompt] * len(prompts), "negative_prompt"), cond])
        return cond.to(self.dtype)

    def latent_shape(self, run) -> tuple[int, ...]:
        v = run.values
        return (len(run.prompts), self.transformer.config.in_channels, v["num_frames"],
                v["height"] // self.vae_scale_factor, v["width"] // self.vae_scale_factor)  # (B, C, F, h, w)

    def predict(self, run, model_in, i, t, text):
        model_in = self.scheduler.scale_model_input(model_in, t)  # Euler's input scaling (DDPM / DDIM: none)
        return self.transformer(model_in, run.model_timesteps[i], text)

    def step(self, run, pred, i, t, latents):
        """The scheduler's step; DDPM's variance noise (and Euler's draw) from the run's generator (the release's
        global one)."""
        return self.scheduler.step(pred, t, latents, generator=run.generator, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, F, h, w) latents -> (B, F, H, W, 3) uint8, the VAE run per frame in chunks."""
        b, c, f, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * f, c, h, w) / LATENT_SCALE
        chunk = max(1, self.config.decode_chunk_size)
        images = torch.cat([self.vae.decode(frames[i:i + chunk].to(self.vae.dtype)).sample
                            for i in range(0, b * f, chunk)])
        return self.to_frames(images.unflatten(0, (b, f)).transpose(1, 2))  # (B, 3, F, H, W) -> frames
