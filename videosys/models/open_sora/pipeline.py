"""Open-Sora 1.2 text-to-video: OpenSoraConfig (published defaults, `tiny` preset) and OpenSoraPipeline.

The release is three hub repos, each loaded in its own layout: the transformer
(hpcai-tech/OpenSora-STDiT-v3), the VAE (hpcai-tech/OpenSora-VAE-v1.2) and the text encoder
(DeepFloyd/t5-v1_1-xxl, 300 tokens). A folder written by `save_pretrained` (transformer/, vae/,
text_encoder/, tokenizer/, scheduler/, model_index.json) loads too.

Sampling as the release's inference config (configs/opensora-v1-2/inference/sample.py): rectified
flow, 30 steps, the resolution / length timestep transform, cfg 7.0 against the learned null
caption, fps 24, prompts suffixed with "aesthetic score: 6.5.". Reference images / videos, the mask
strategy and looping as the release's scripts/inference.py: conditioning.py.
"""

import os
from dataclasses import dataclass
from functools import partial

import torch

from videosys.core.config import BaseConfig, RequestError, check_media_file
from videosys.core.pipeline import VideoSysOutput, VideoSysPipeline
from videosys.models.open_sora import conditioning
from videosys.models.open_sora.cache_settings import CACHE_SETTINGS
from videosys.models.open_sora.transformer import IMAGE_FPS, STDiT3, STDiT3Config
from videosys.models.open_sora.vae import OpenSoraVAE, OpenSoraVAEConfig, latent_frame_count
from videosys.schedulers.rectified_flow import RectifiedFlowScheduler
from videosys.utils import text as text_stack
from videosys.models.modules.pretrained import load_pretrained
from videosys.utils.hub import resolve_dir

# Published size tables (opensora/datasets/aspect.py at v1.2.0): aspect ratio "H:W" -> its key,
# and per resolution the (height, width) of each key.
ASPECT_RATIOS = {
    "3:8": "0.38", "9:21": "0.43", "12:25": "0.48", "1:2": "0.50", "9:17": "0.53", "27:50": "0.54", "9:16": "0.56",
    "5:8": "0.62", "2:3": "0.67", "3:4": "0.75", "1:1": "1.00", "4:3": "1.33", "3:2": "1.50", "16:9": "1.78",
    "17:9": "1.89", "2:1": "2.00", "50:27": "2.08",
}
_KEYS = list(ASPECT_RATIOS.values())
_SIZES = {
    "144p": [(117, 312), (125, 291), (133, 277), (135, 270), (139, 262), (141, 260), (144, 256), (151, 241),
             (156, 234), (166, 221), (192, 192), (221, 165), (235, 156), (256, 144), (263, 139), (271, 135),
             (277, 132)],
    "240p": [(196, 522), (210, 490), (222, 462), (226, 452), (232, 438), (236, 436), (240, 426), (252, 404),
             (262, 393), (276, 368), (320, 320), (370, 278), (392, 262), (426, 240), (440, 232), (452, 226),
             (462, 222)],
    "360p": [(294, 784), (314, 732), (332, 692), (340, 680), (350, 662), (352, 652), (360, 640), (380, 608),
             (392, 588), (416, 554), (480, 480), (554, 416), (588, 392), (640, 360), (660, 350), (678, 340),
             (692, 332)],
    "480p": [(392, 1046), (420, 980), (444, 925), (452, 904), (466, 880), (470, 870), (480, 854), (506, 810),
             (522, 784), (554, 738), (640, 640), (740, 555), (784, 522), (854, 480), (880, 466), (906, 454),
             (924, 444)],
    "720p": [(588, 1568), (628, 1466), (666, 1388), (678, 1356), (698, 1318), (706, 1306), (720, 1280), (758, 1212),
             (784, 1176), (832, 1110), (960, 960), (1108, 832), (1176, 784), (1280, 720), (1320, 698), (1358, 680),
             (1386, 666)],
}
RESOLUTIONS = {name: dict(zip(_KEYS, sizes)) for name, sizes in _SIZES.items()}
MICRO_FRAMES = 17  # frames per temporal-VAE chunk in the release
DURATIONS = {"2s": 51, "4s": 102, "8s": 204, "16s": 408}  # at 24 fps, as published

TINY_TEXT_DIM = 32


def image_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(height, width) of a published resolution name ("144p".."720p") and aspect ratio ("9:16", H:W)."""
    if resolution not in RESOLUTIONS:
        raise RequestError("resolution", f"unknown resolution {resolution!r}; choose from {list(RESOLUTIONS)}")
    if aspect_ratio not in ASPECT_RATIOS:
        raise RequestError("aspect_ratio", f"unknown aspect_ratio {aspect_ratio!r}; choose from {list(ASPECT_RATIOS)}")
    return RESOLUTIONS[resolution][ASPECT_RATIOS[aspect_ratio]]


def frame_count(num_frames) -> int:
    """A duration name ("2s", "4s", "8s", "16s") or a positive frame count -> frames."""
    if isinstance(num_frames, str):
        if num_frames in DURATIONS:
            return DURATIONS[num_frames]
        if num_frames.isdigit():
            num_frames = int(num_frames)
        else:
            raise RequestError("num_frames", f"num_frames {num_frames!r} is neither a frame count nor one of "
                               f"{list(DURATIONS)}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise RequestError("num_frames", f"num_frames must be a positive integer or one of {list(DURATIONS)}, "
                           f"got {num_frames!r}")
    if 1 < num_frames < MICRO_FRAMES:
        # the release's timestep transform counts latent frames as num_frames // 17 * 5: zero here
        raise RequestError("num_frames", f"num_frames={num_frames}: Open-Sora 1.2 takes 1 frame (an image) or at "
                           f"least {MICRO_FRAMES} (one VAE micro-chunk); e.g. 17, 34, 51 ('2s')")
    return num_frames


@dataclass
class OpenSoraConfig(BaseConfig):
    """Open-Sora 1.2 generation config. `OpenSoraConfig()` is the release (480p 9:16, 51 frames, 30 steps,
    cfg 7.0, 24 fps); `OpenSoraConfig(preset="tiny")` is a small random model that runs on a CPU in seconds.

    Size: explicit height / width win over resolution / aspect_ratio, which win over the preset's size.
    """

    num_frames: int | str | None = None  # a count or a duration: "2s"=51, "4s"=102, "8s"=204, "16s"=408
    resolution: str | None = None  # "144p", "240p", "360p", "480p", "720p"
    aspect_ratio: str | None = None  # "H:W", e.g. "9:16"
    vae_path: str | None = None  # None: hpcai-tech/OpenSora-VAE-v1.2 (or model_path's vae/ folder)
    text_encoder_path: str | None = None  # None: DeepFloyd/t5-v1_1-xxl (or model_path's text_encoder/)
    max_text_length: int = 300
    aes: float | None = 6.5  # aesthetic score appended to prompts, as the release's inference config
    flow: float | None = None  # motion score appended ("motion score: 4.0."); the release's config: None
    camera_motion: str | None = None  # appended as "camera motion: pan right."; the release's config: None
    # conditioning (conditioning.py), the release's --reference-path / --mask-strategy / --loop / ...;
    # reference_path and mask_strategy here apply to every prompt of a call that passes none
    reference_path: str | None = None  # image / video file(s), ";" joins several
    mask_strategy: str | None = None  # e.g. "0" (image-to-video), "0,0,0,-1,1", "0;0,1,0,-1,1"
    loop: int = 1  # clips generated one after the other, each conditioned on the end of the previous
    condition_frame_length: int = 5  # latent frames a loop takes from the previous clip (5 = 17 video frames)
    condition_frame_edit: float = 0.0  # their edit ratio
    align: int | None = 5  # mask-strategy starts snap to multiples of this (latent frames), as the release

    model_name = "open-sora"
    cache_settings = CACHE_SETTINGS  # cache_settings.py: the published settings of each cache method
    official_model_path = "hpcai-tech/OpenSora-STDiT-v3"
    official_vae_path = "hpcai-tech/OpenSora-VAE-v1.2"
    official_text_encoder_path = "DeepFloyd/t5-v1_1-xxl"
    defaults = dict(num_frames=51, resolution="480p", aspect_ratio="9:16", num_inference_steps=30, guidance_scale=7.0,
                    fps=24)
    presets = {"tiny": dict(num_frames=17, height=64, width=64, num_inference_steps=30, guidance_scale=7.0, fps=24)}

    def __post_init__(self):
        size_given = self.height is not None or self.width is not None
        named_size_given = self.resolution is not None or self.aspect_ratio is not None
        super().__post_init__()
        self.num_frames = frame_count(self.num_frames)
        named = image_size(self.resolution, self.aspect_ratio)  # also checks both names
        if (named_size_given and not size_given) or self.height is None or self.width is None:
            self.height, self.width = named
        if isinstance(self.mask_strategy, int) and not isinstance(self.mask_strategy, bool):
            self.mask_strategy = str(self.mask_strategy)  # `--set mask_strategy=0` parses as a number
        if self.reference_path is not None and not isinstance(self.reference_path, str):
            raise ValueError(f"reference_path must be a path string (';' joins several), got {self.reference_path!r}")

    REQUEST_VALUES = (*BaseConfig.REQUEST_VALUES, "fps")
    CONDITIONING = ("reference", "mask_strategy", "loop", "condition_frame_length", "condition_frame_edit", "aes",
                    "flow", "camera_motion")

    def size_of(self, resolution, aspect_ratio, height, width) -> tuple[int, int]:
        """A call's size: height / width, else resolution / aspect_ratio, else the config's."""
        if height is not None or width is not None:
            return height or self.height, width or self.width
        if resolution is not None or aspect_ratio is not None:
            return image_size(resolution or self.resolution, aspect_ratio or self.aspect_ratio)
        return self.height, self.width

    def check_request(self, values: dict) -> dict:
        """The size (named or explicit) and frame count (a count or a duration name) resolved, BaseConfig's
        checks, the VAE's smallest size, then the conditioning's values that need no weights (mask strategy
        strings, prompt flags, loop settings, reference file types); the conditioning's values stay as given
        (None: the config's, taken when the conditioning is prepared). References are loaded, and prompts'
        JSON read, when the pipeline prepares them."""
        out = dict(values)
        out["height"], out["width"] = self.size_of(out.get("resolution"), out.get("aspect_ratio"), out.get("height"),
                                                   out.get("width"))
        if out.get("num_frames") is not None:
            out["num_frames"] = frame_count(out["num_frames"])
        out = super().check_request(out)
        factor = OpenSoraVAE.spatial_factor
        if out["height"] < factor or out["width"] < factor:
            raise RequestError("height" if out["height"] < factor else "width", f"height and width must be at least "
                               f"{factor}, got {out['height']}x{out['width']}")
        pick = {name: getattr(self, name) if out.get(name) is None else out[name]
                for name in self.CONDITIONING if name != "reference"}
        strategies = pick["mask_strategy"]  # one per prompt for a list of prompts
        strategies = strategies if isinstance(strategies, (list, tuple)) else [strategies]
        for name, check in (
                ("mask_strategy", lambda: [conditioning.parse_mask_strategy(m) for m in strategies]),
                ("reference", lambda: check_reference_types(out.get("reference"))),
                ("aes", lambda: conditioning.check_prompt_flags(pick["aes"], pick["flow"], pick["camera_motion"])),
                ("loop", lambda: conditioning.check_loop(pick["loop"], pick["condition_frame_length"],
                                                         pick["condition_frame_edit"],
                                                         latent_frame_count(out["num_frames"], MICRO_FRAMES)))):
            try:
                check()
            except ValueError as err:  # the message starts with the field it is about
                named = str(err).split()[0].split("=")[0]
                raise RequestError(named if named in self.CONDITIONING else name, str(err)) from None
        return out

    @property
    def pipeline_cls(self):
        return OpenSoraPipeline


def check_reference_types(reference) -> None:
    """Reference paths name an image or video file the loader reads: its type, and its contents probed (a file
    that is missing or does not decode is refused, naming it); tensors, arrays and images are checked when
    they load."""
    items = reference if isinstance(reference, (list, tuple)) else [reference]
    for item in items:
        if isinstance(item, (list, tuple)):
            check_reference_types(item)
        elif isinstance(item, str):
            for path in conditioning.references_of(item):
                ext = os.path.splitext(path)[1].lower()
                if ext not in conditioning.IMAGE_EXTENSIONS + conditioning.VIDEO_EXTENSIONS:
                    raise ValueError(f"reference {path!r}: unsupported file type {ext!r}; images "
                                     f"{conditioning.IMAGE_EXTENSIONS}, videos {conditioning.VIDEO_EXTENSIONS}")
                # the file read as its type says, before any model work (RequestError naming `reference`)
                check_media_file(path, "reference", "image" if ext in conditioning.IMAGE_EXTENSIONS else "video")


def tiny_components(seed: int = 0):
    """Transformer, VAE and text stack of the `tiny` preset: the release's classes, small widths, random weights."""
    tokenizer = text_stack.build_tiny_tokenizer(OpenSoraConfig.max_text_length)
    text_encoder = text_stack.build_tiny_text_encoder(len(tokenizer), d_model=TINY_TEXT_DIM, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = STDiT3(STDiT3Config(hidden_size=64, depth=2, num_heads=4, caption_channels=TINY_TEXT_DIM,
                                          model_max_length=OpenSoraConfig.max_text_length, input_sq_size=64))
        vae = OpenSoraVAE(OpenSoraVAEConfig(
            spatial_vae_config=dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, latent_channels=4,
                                    norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 4,
                                    up_block_types=["UpDecoderBlock2D"] * 4, sample_size=64),
            temporal_vae_config=dict(filters=16, num_res_blocks=1, num_groups=8)))
    return transformer.eval(), vae.eval(), text_encoder, tokenizer


def published_timestep(t: float) -> int:
    """A timestep in the form the published PAB tables name it: rounded to bf16 (the release's dtype;
    the model casts t before embedding it) and truncated to an int, as VideoSys matches them.

    The MLP broadcast timesteps 676, 788, 864 are steps 21, 17, 13 of the release's 480p 2s schedule
    in this form (674.9 -> 676, 787.4 -> 788, 863.6 -> 864); the floats never equal them. Independent
    of the run's dtype, so fp32 and bf16 runs broadcast on the same steps.
    """
    return int(float(torch.tensor(float(t), dtype=torch.float32).to(torch.bfloat16)))


def _is_pipeline_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


def load_t5(path: str, dtype: torch.dtype):
    """Tokenizer and T5 encoder from a folder with text_encoder/ + tokenizer/, or a T5 repo (DeepFloyd layout)."""
    if os.path.isdir(os.path.join(path, "text_encoder")):
        return text_stack.load_text_stack(path, dtype, "cpu")
    from transformers import AutoTokenizer, T5EncoderModel

    folder = resolve_dir(path)
    return load_pretrained(AutoTokenizer, folder), load_pretrained(T5EncoderModel, folder, dtype=dtype).eval()


class OpenSoraPipeline(VideoSysPipeline):
    pipeline_class_name = "OpenSoraPipeline"
    progress_name = "open-sora"

    @classmethod
    def from_config(cls, config: OpenSoraConfig, parts: dict | None = None) -> "OpenSoraPipeline":
        """`parts`: the components given (the planner's weightless full-size ones: `architecture`), else loaded."""
        dtype = config.torch_dtype()
        path = config.model_path
        if parts is not None:
            transformer, vae, text_encoder, tokenizer = (parts[k] for k in ("transformer", "vae", "text_encoder",
                                                                            "tokenizer"))
            scheduler = RectifiedFlowScheduler()
        elif path is None:  # tiny preset, random weights
            transformer, vae, text_encoder, tokenizer = tiny_components()
            scheduler = RectifiedFlowScheduler()
        elif _is_pipeline_folder(path):
            transformer = STDiT3.from_pretrained(path, "transformer", dtype=dtype)
            vae = OpenSoraVAE.from_pretrained(config.vae_path or path, None if config.vae_path else "vae", dtype=dtype)
            tokenizer, text_encoder = load_t5(config.text_encoder_path or path, dtype)
            scheduler = RectifiedFlowScheduler.from_pretrained(resolve_dir(path, "scheduler"))
        else:  # the release: three repos
            transformer = STDiT3.from_pretrained(path, dtype=dtype)
            vae = OpenSoraVAE.from_pretrained(config.vae_path or config.official_vae_path, dtype=dtype)
            tokenizer, text_encoder = load_t5(config.text_encoder_path or config.official_text_encoder_path, dtype)
            scheduler = RectifiedFlowScheduler()
        return cls.assemble(config, transformer, vae, text_encoder, tokenizer, scheduler)

    @classmethod
    def architecture(cls, config: OpenSoraConfig) -> dict:
        """The release's parts without weights (the memory planner's full-size model): STDiT3-XL/2, its VAE, T5."""
        from videosys.models.modules.architectures import t5_xxl_encoder

        return dict(transformer=STDiT3(STDiT3Config()), vae=OpenSoraVAE(OpenSoraVAEConfig()),
                    text_encoder=t5_xxl_encoder(), tokenizer=text_stack.build_tiny_tokenizer(config.max_text_length))

    # ---- inputs --------------------------------------------------------------------------------
    def prepare_conditioning(self, prompt, reference, mask_strategy, loop, condition_frame_length,
                             condition_frame_edit, aes, flow, camera_motion, height, width,
                             latent_frames) -> conditioning.Conditioning:
        """The call's conditioning (else the config's), parsed and checked, references loaded: no compute yet."""
        c = self.config
        if reference is None and c.reference_path is not None:
            reference = c.reference_path if isinstance(prompt, str) else [c.reference_path] * len(prompt)
        if mask_strategy is None and c.mask_strategy is not None:
            mask_strategy = c.mask_strategy if isinstance(prompt, str) else [c.mask_strategy] * len(prompt)
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return conditioning.prepare(
            prompt, reference, mask_strategy, loop=pick(loop, c.loop),
            condition_frame_length=pick(condition_frame_length, c.condition_frame_length),
            condition_frame_edit=pick(condition_frame_edit, c.condition_frame_edit), align=c.align,
            height=height, width=width, latent_frames=latent_frames, vae_latent_frames=self.vae.latent_frames,
            aes=pick(aes, c.aes), flow=pick(flow, c.flow), camera_motion=pick(camera_motion, c.camera_motion),
            chunk_frames=self.vae.config.micro_frame_size or MICRO_FRAMES)

    def encode_prompt(self, prompts: list[str], negative_prompt: str | None, do_cfg: bool):
        """T5 states laid out [uncond; cond] and the text mask (None when nothing is masked).

        Without a negative prompt the uncond branch is the learned null caption (y_embedder.y_embedding),
        masked like its prompt, as the release samples.
        """
        max_len = self.config.max_text_length
        cond, mask = text_stack.encode_text(self.tokenizer, self.text_encoder, prompts, max_len, self.device)
        if do_cfg:
            if negative_prompt:
                uncond, uncond_mask = text_stack.encode_text(self.tokenizer, self.text_encoder,
                                                             [negative_prompt] * len(prompts), max_len, self.device, "negative_prompt")
            else:
                null = self.transformer.y_embedder.y_embedding
                if null.shape[0] != cond.shape[1]:
                    raise ValueError(f"the transformer's null caption has {null.shape[0]} tokens, the text encoder "
                                     f"gives {cond.shape[1]} (max_text_length)")
                uncond, uncond_mask = null[None].expand(len(prompts), -1, -1).to(cond.dtype), mask
            cond, mask = torch.cat([uncond, cond]), torch.cat([uncond_mask, mask])
        mask = mask.bool()
        if bool(mask.all()):  # one host sync per generation, not per step
            mask = None
        return cond.to(self.dtype), mask

    # ---- generation: the request, then VideoSysPipeline.run_generation's hooks -------------------
    @torch.inference_mode()
    def generate(self, prompt, negative_prompt: str | None = None, seed: int = 0, num_frames: int | str | None = None,
                 resolution: str | None = None, aspect_ratio: str | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, fps: int | None = None, reference=None,
                 mask_strategy: str | list | None = None,
                 loop: int | None = None, condition_frame_length: int | None = None,
                 condition_frame_edit: float | None = None, aes: float | None = None, flow: float | None = None,
                 camera_motion: str | None = None) -> VideoSysOutput:
        """Videos for `prompt` (a string or a list): (B, T, H', W', 3) uint8 in `.video`.

        Size: height / width, else resolution / aspect_ratio, else the config's. The VAE floors sizes to
        a multiple of 8 (480p 9:16 = 480x854 comes out 480x848, as in the release). Without a
        negative prompt the uncond branch is the learned null caption, as published.

        Conditioning, as the release (conditioning.py; None takes the config's value): `reference` image /
        video file(s) or tensor(s), `mask_strategy` where they go ("0": image-to-video), `loop` clips each
        continuing the last (`condition_frame_length` latent frames, edit ratio `condition_frame_edit`);
        `aes` / `flow` / `camera_motion` suffix the prompts. With loop, `.latents` and the cache stats are
        the last clip's.
        """
        return self.run_generation(prompt, seed, dict(
            negative_prompt=negative_prompt, num_frames=num_frames, resolution=resolution, aspect_ratio=aspect_ratio,
            height=height, width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            fps=fps, reference=reference, mask_strategy=mask_strategy, loop=loop,
            condition_frame_length=condition_frame_length, condition_frame_edit=condition_frame_edit, aes=aes,
            flow=flow, camera_motion=camera_motion))

    def prepare_run(self, run, prompt) -> None:
        """The conditioning (conditioning.py): parsed, references loaded and encoded, checked before any
        denoising; the texts are its prompts (the first clip's)."""
        v = run.values
        latent_t, latent_h, latent_w = self.vae.latent_size(v["num_frames"], v["height"], v["width"])
        cond = self.prepare_conditioning(prompt, *(v.get(name) for name in OpenSoraConfig.CONDITIONING), v["height"],
                                         v["width"], latent_t)
        if (cond.conditioned or cond.loop > 1) and self.config.freeinit_config() is not None:
            raise ValueError("freeinit_iters > 1 does not combine with reference conditioning or loop yet")
        if cond.conditioned:
            cond.encode(self.vae, run.seed, self.device, self.dtype)
            for refs in cond.references:
                for ref in refs:
                    if tuple(ref.shape[2:]) != (latent_h, latent_w):
                        raise ValueError(f"a reference encodes to {tuple(ref.shape[2:])} latents, the video to "
                                         f"{(latent_h, latent_w)}")
        run.conditioning, run.prompts = cond, cond.prompts(0)
        run.state.update(clips=[], fps={})

    def latent_shape(self, run) -> tuple[int, ...]:
        v = run.values
        return (len(run.conditioning.segments), self.transformer.config.in_channels,
                *self.vae.latent_size(v["num_frames"], v["height"], v["width"]))  # (B, C, T', h, w)

    def initial_latents(self, run) -> torch.Tensor:
        """A clip's noise from the run's generator (rectified flow starts at unit noise, unscaled)."""
        return torch.randn(self.latent_shape(run), generator=run.generator, dtype=torch.float32).to(self.device)

    def sample_video(self, run, latents: torch.Tensor) -> torch.Tensor:
        """The clips, one after the other: a loop's clip continues the last (conditioning.py); `latents` are the
        first clip's noise. A clip with conditioned frames runs once under its step plan, else FreeInit may
        re-run the sampler."""
        cond, steps = run.conditioning, run.values["num_inference_steps"]
        timesteps = self.begin_sampling(run, steps)  # the plans' schedule; each sampling run sets it again, alike
        for loop_index in range(cond.loop):
            if loop_index:
                if cond.prompts(loop_index) != run.prompts:  # a loop prompt ("|0|..|2|..") changes its text
                    run.prompts = cond.prompts(loop_index)
                    run.text = self.encode_prompt(run.prompts, run.negative_prompt, run.do_cfg)
                latents = self.initial_latents(run)
            run.state["plan"] = cond.plan(loop_index, latents, timesteps, self.scheduler.timestep_values,
                                          run.generator, self.scheduler.num_timesteps)
            if run.state["plan"] is None:
                latents = self.sample(latents, partial(self.sampling_run, run), steps, run.seed)
            else:
                latents = self.sampling_run(run, latents, steps)
            if loop_index < cond.loop - 1:  # the next clip continues this one
                run.state["clips"].append(self.decode_clip(run, latents))
                cond.append_generated(loop_index + 1, run.state["clips"][-1], self.vae, self.device, self.dtype)
        run.steps = len(timesteps) * cond.loop
        return latents

    def begin_sampling(self, run, num_steps: int) -> torch.Tensor:
        """The rectified-flow schedule, shifted for the video's resolution and length (on the device)."""
        v = run.values
        run.timesteps = self.scheduler.set_timesteps(num_steps, v["height"], v["width"], v["num_frames"],
                                                     device=self.device)
        return run.timesteps

    def sampling_run(self, run, latents: torch.Tensor, num_steps: int) -> torch.Tensor:
        """One clip through the shared loop; the run's step plan (if any) holds conditioned frames at their
        latents: it edits the latents before each step and after it, and gives the x_mask."""
        timesteps = self.begin_sampling(run, num_steps)
        plan = run.state["plan"]
        run.state["x_mask"] = None  # (B, T) this step's, from the plan
        # the caches see the published (bf16-rounded, int) timesteps; the model and scheduler index by step.
        # A frame that starts being edited jumps in timestep: the caches compute on that step.
        cache_timesteps = torch.tensor([published_timestep(t) for t in self.scheduler.timestep_values])
        return self.denoise(latents, timesteps, partial(self.predict, run), partial(self.step, run), run.text,
                            run.do_cfg, run.guidance_scale, self.progress_name, cache_timesteps,
                            before_step=None if plan is None else partial(self.before_step, run),
                            refresh_steps=plan.noise_steps if plan is not None else ())

    def before_step(self, run, i, t, latents):
        latents, run.state["x_mask"] = run.state["plan"].before_step(i, latents, self.scheduler)
        return latents

    def predict(self, run, model_in, i, t, text, mask):
        batch = model_in.shape[0]
        if batch not in run.state["fps"]:  # built once per batch size (both branches, or one), not per step
            cond_fps = IMAGE_FPS if run.values["num_frames"] == 1 else run.values["fps"]  # images: the release's 120
            run.state["fps"][batch] = torch.full((batch,), float(cond_fps), device=self.device)
        frames_mask = run.state["x_mask"]
        if frames_mask is not None and frames_mask.shape[0] != batch:  # both CFG branches in one batch
            frames_mask = torch.cat([frames_mask] * (batch // frames_mask.shape[0]))
        pred = self.transformer(model_in, t.expand(batch), text, mask, x_mask=frames_mask,
                                fps=run.state["fps"][batch], height=run.values["height"], width=run.values["width"])
        return pred[:, :self.transformer.config.in_channels]  # velocity; the other half is the unused sigma prediction

    def step(self, run, velocity, i, t, latents):
        stepped = self.scheduler.step(velocity, i, latents)
        plan = run.state["plan"]
        return stepped if plan is None else plan.after_step(i, stepped, latents)  # held frames kept

    def decode_clip(self, run, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T', h, w) latents -> (B, 3, T, H, W) pixels in [-1, 1]."""
        return self.vae.decode(latents, run.values["num_frames"])

    def decode_video(self, run, latents: torch.Tensor) -> torch.Tensor:
        """The clips joined (later ones without the frames they repeat) -> (B, T, H, W, 3) uint8."""
        clips = run.state["clips"] + [self.decode_clip(run, latents)]
        return self.to_frames(run.conditioning.join(clips))
