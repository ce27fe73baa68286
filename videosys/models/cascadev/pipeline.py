"""CascadeV video reconstruction: CascadeVConfig (the release's recon defaults, `tiny` preset) and CascadeVPipeline.

    engine = VideoSysEngine(CascadeVConfig(preset="tiny"))
    out = engine.reconstruct("clip.mp4")            # or (T, H, W, 3) uint8 frames
    engine.save_video(out.video[0], "rec.mp4", fps=out.fps)

The flow of bytedance/CascadeV's recon.sh, in one call:
1. frames in [-1, 1] (short edge resized to `size`, centre-cropped to a multiple of 32, square as
   `--square`) -> the EfficientNet semantic compressor: a (16, H/32, W/32) latent per frame;
2. that latent bilinearly upsampled x4 to the SVD-VAE latent size and scaled by `scale_factor` is the
   condition; the DiT refines seeded noise into SVD-VAE latents with Euler-ancestral sampling (8 steps),
   run over windows of `lats_per_vid` frames (stride half a window, linearly blended where they
   overlap) and square latent tiles of `input_size` (stride 3/4 of a tile, later tiles overwrite),
   as the release's forward_with_dpmsolver / forward_by_slice;
3. the SVD VAE's temporal decoder decodes chunks of `decode_chunk_size` frames.

Official weights (three repositories, as pretrained/download.sh): the DiT `s1024.effn-f32.pth` in
ByteDance/CascadeV, the encoder `effnet_encoder.safetensors` in stabilityai/StableWurst, the VAE in
stabilityai/stable-video-diffusion-img2vid-xt/vae. `save_pretrained` writes one folder
(transformer/ encoder/ vae/ model_index.json) that `model_path` loads back.
"""

import os
import time
from functools import partial
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from videosys.core.config import BaseConfig
from videosys.core.pipeline import VideoSysOutput, VideoSysPipeline
from videosys.models.cascadev.cache_settings import CACHE_SETTINGS
from videosys.models.cascadev.encoder import EfficientNetEncoder, EfficientNetEncoderConfig
from videosys.models.cascadev.transformer import (RELEASE_CHECKPOINT, CascadeVTransformer, CascadeVTransformerConfig,
                                                  release_state_dict)
from videosys.models.modules.pretrained import check_state_dict
from videosys.utils.hub import resolve_dir

ENCODER_REPO, ENCODER_FILE = "stabilityai/StableWurst", "effnet_encoder.safetensors"
VAE_REPO = "stabilityai/stable-video-diffusion-img2vid-xt"
SCHEDULERS = ("euler-a", "ddim")  # recon/refine_latent.py's diffusers choices (its DPMS is PixArt's own solver)


@dataclass
class CascadeVConfig(BaseConfig):
    """CascadeV reconstruction config. `CascadeVConfig()` is the release (1024px, 8 Euler-ancestral steps,
    seed 42, 8 fps); `CascadeVConfig(preset="tiny")` is the same classes at small widths with random
    weights (64px clips, runs on a CPU in seconds; its reconstructions are noise)."""

    encoder_path: str | None = None  # folder / file / hub id holding effnet_encoder.safetensors
    vae_path: str | None = None  # hub id or folder of the SVD VAE (its vae/ subfolder, or the VAE folder itself)
    scheduler: str = "euler-a"
    seed: int = 42  # recon.sh --seed 42
    # short edge the input is resized to (evae.py --size); None: the DiT's tile (1024 px for the release,
    # recon.sh's --size; 64 for tiny); 0 keeps the input size
    size: int | None = None
    square: bool = True  # centre-crop to a square (recon.sh passes --square)
    scale_factor: float = 0.13025  # configs/s1024.effn-f32.py scale_factor, applied to both latents
    sr_scale: int = 4  # condition upsampling: 32x semantic latent -> 8x SVD latent
    tile_overlap: float = 0.25  # DiT tiles step round(0.75 * input_size) (forward_by_slice)
    encode_chunk_size: int = 8  # frames per encoder call
    decode_chunk_size: int = 4  # frames per temporal-decoder call (lat2vid.py's slice_size)

    model_name = "cascadev"
    cache_settings = CACHE_SETTINGS  # cache_settings.py: the published settings of each cache method
    official_model_path = "ByteDance/CascadeV"
    defaults = dict(num_inference_steps=8, fps=8)
    presets = {"tiny": dict(num_inference_steps=8, fps=8)}

    def __post_init__(self):
        super().__post_init__()
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap}")
        for name in ("height", "width", "guidance_scale"):
            if getattr(self, name) is not None:
                raise ValueError(f"CascadeV reconstructs its input: {name} does not apply (use size / square)")
        for name in ("encode_chunk_size", "decode_chunk_size", "sr_scale"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def pipeline_cls(self):
        return CascadeVPipeline


@dataclass
class ReconstructionOutput(VideoSysOutput):
    input_video: torch.Tensor | None = None  # (1, T, H, W, 3) uint8: the input as resized / cropped
    fps: float | None = None  # the input file's frame rate, else the config's


# ---- components --------------------------------------------------------------------------------
TINY_TRANSFORMER = dict(input_size=8, hidden_size=96, depth=4, num_heads=4, lats_per_vid=8,
                        attn_strides=[[1, 2], [4, 1], None, [2, 2]])
TINY_ENCODER_STAGES = [[True, 1, 3, 1, 8, 8, 1], [True, 4, 3, 2, 8, 16, 1], [True, 4, 3, 2, 16, 24, 1],
                       [False, 4, 3, 2, 24, 32, 1], [False, 6, 3, 1, 32, 32, 1], [False, 6, 3, 2, 32, 48, 1]]


def tiny_components(seed: int = 0):
    """DiT, encoder and SVD VAE of the `tiny` preset: the release's classes at small widths, random weights."""
    from diffusers import AutoencoderKLTemporalDecoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CascadeVTransformer(CascadeVTransformerConfig(**TINY_TRANSFORMER))
        encoder = EfficientNetEncoder(EfficientNetEncoderConfig(stages=TINY_ENCODER_STAGES, last_channels=64))
        vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                                           down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4,
                                           sample_size=64)
    return transformer.eval(), encoder.eval(), vae.eval()


def resolve_file(path_or_id: str, filename: str) -> str:
    """A local file: `path_or_id` itself, `filename` inside that folder, or `filename` from that hub repo."""
    if os.path.isfile(path_or_id):
        return path_or_id
    if os.path.isdir(path_or_id):
        path = os.path.join(path_or_id, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {filename} in {path_or_id!r}")
        return path
    if path_or_id.startswith((".", "/")) or path_or_id.count("/") != 1:
        raise FileNotFoundError(f"no checkpoint at {path_or_id!r}")
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(path_or_id, filename)
    except Exception as err:  # offline, unknown repo or file: one clear error
        raise FileNotFoundError(f"could not load {filename} from {path_or_id!r} ({type(err).__name__}: {err}); "
                                "download it once and pass the local path, or use preset='tiny' offline") from err


def load_release_transformer(path: str, dtype: torch.dtype,
                             config: CascadeVTransformerConfig | None = None) -> CascadeVTransformer:
    """The release's DiT (.pth: a file, a folder or the hub repo) into the release's architecture
    (CascadeVTransformerConfig defaults, or `config`)."""
    file = resolve_file(path, RELEASE_CHECKPOINT)
    with torch.device("meta"):
        model = CascadeVTransformer(config or CascadeVTransformerConfig())
    state = release_state_dict(file)
    check_state_dict(model, state, file)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def load_encoder(path: str, dtype: torch.dtype, config: EfficientNetEncoderConfig | None = None) -> EfficientNetEncoder:
    """StableWurst's effnet_encoder.safetensors (a file, a folder or the hub repo: StableCascade's encoder,
    or `config`) or our saved encoder/ folder (with its config.json)."""
    from safetensors.torch import load_file

    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return EfficientNetEncoder.from_pretrained(path, dtype=dtype)
    file = resolve_file(path, ENCODER_FILE)
    with torch.device("meta"):
        model = EfficientNetEncoder(config or EfficientNetEncoderConfig())
    state = load_file(file)
    check_state_dict(model, state, file)
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    return model.eval()


def load_vae(path: str, dtype: torch.dtype):
    from diffusers import AutoencoderKLTemporalDecoder

    folder = path if os.path.isfile(os.path.join(path, "config.json")) else resolve_dir(path, "vae")
    return AutoencoderKLTemporalDecoder.from_pretrained(folder, torch_dtype=dtype).eval()


def make_scheduler(name: str):
    """The release's schedulers with diffusers' default config (PixArt's linear betas 1e-4..0.02, 1000 steps)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler() if name == "euler-a" else DDIMScheduler()


# ---- windows and tiles (the release's forward_with_dpmsolver / forward_by_slice) --------------------
def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Starts of `tile`-long windows covering `size`, stepping round(tile * (1 - overlap)); the last one
    ends at `size`."""
    step = max(1, round(tile * (1 - overlap)))
    starts = list(range(0, max(size - tile, 0), step))
    return starts + [size - tile]


def window_starts(frames: int, window: int) -> list[int]:
    """Frame windows stepping window // 2, the last aligned to the end (forward_with_dpmsolver)."""
    starts = []
    for beg in range(0, frames, max(1, window // 2)):
        if beg + window >= frames:
            starts.append(frames - window)
            break
        starts.append(beg)
    return starts


def blend_weights(overlap: int, window: int) -> torch.Tensor | None:
    """(window,) weights of a new window over the previous one: a 0 -> 1 ramp over the overlap, then 1;
    None (plain overwrite) below 2 overlapping frames, as the release."""
    if overlap < 2:
        return None
    weights = torch.ones(window)
    weights[:overlap] = torch.linspace(0, 1, overlap)
    return weights


class CascadeVPipeline(VideoSysPipeline):
    components = ("transformer", "encoder", "vae")
    pipeline_class_name = "CascadeVPipeline"

    def __init__(self, config: CascadeVConfig, transformer, encoder, vae, scheduler):
        self.config = config
        self.device, self.dtype = config.torch_device(), config.torch_dtype()
        self.transformer, self.encoder, self.vae, self.scheduler = transformer, encoder, vae, scheduler
        from videosys.core.parallel import ParallelState

        self.parallel = ParallelState()
        self.run_stats = {}
        self.stage_hooks: list = []  # VideoSysPipeline.stage: the memory plan's and the planner's hooks

    @classmethod
    def from_config(cls, config: CascadeVConfig, parts: dict | None = None) -> "CascadeVPipeline":
        """`parts`: the components given (the planner's weightless full-size ones: `architecture`), else loaded."""
        dtype = config.torch_dtype()
        path = config.model_path
        if parts is not None:
            transformer, encoder, vae = parts["transformer"], parts["encoder"], parts["vae"]
        elif path is None:  # tiny preset, random weights
            transformer, encoder, vae = tiny_components()
        elif os.path.isfile(os.path.join(path, "model_index.json")):  # our save_pretrained layout
            transformer = CascadeVTransformer.from_pretrained(path, "transformer", dtype=dtype)
            encoder = load_encoder(config.encoder_path or os.path.join(path, "encoder"), dtype)
            vae = load_vae(config.vae_path or os.path.join(path, "vae"), dtype)
        else:  # the release: three repositories
            transformer = load_release_transformer(path, dtype)
            encoder = load_encoder(config.encoder_path or ENCODER_REPO, dtype)
            vae = load_vae(config.vae_path or VAE_REPO, dtype)
        device = config.torch_device()
        modules = [m.to(device) if m.dtype == dtype else m.to(device=device, dtype=dtype)
                   for m in (transformer, encoder, vae)]
        pipeline = cls(config, *modules, make_scheduler(config.scheduler))
        pipeline.enable_configured_caches()  # a method that cannot act on this DiT refuses here, before any compute
        if config.compile:
            from videosys.models.modules.compile import compile_regions

            compile_regions(pipeline.transformer)
        return pipeline

    @classmethod
    def architecture(cls, config: CascadeVConfig) -> dict:
        """The release's parts without weights (the memory planner's full-size model): the s1024 DiT, StableCascade's
        EfficientNet encoder and SVD's temporal-decoder VAE (stabilityai/stable-video-diffusion-img2vid-xt
        vae/config.json: 128-256-512-512 channels, 2 layers a block)."""
        from diffusers import AutoencoderKLTemporalDecoder

        vae = AutoencoderKLTemporalDecoder(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                           down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4,
                                           sample_size=768)
        return dict(transformer=CascadeVTransformer(CascadeVTransformerConfig()),
                    encoder=EfficientNetEncoder(EfficientNetEncoderConfig()), vae=vae)

    def plan_input(self, values: dict) -> torch.Tensor:
        """A blank clip of the size reconstruct() works at (the planner's input): `num_frames` (default the DiT's
        window) frames of size x size."""
        size = self.config.size or self.transformer.config.input_size * self.vae_factor
        frames = values.get("num_frames") or self.transformer.config.lats_per_vid
        return torch.zeros((frames, size, size, 3), dtype=torch.uint8)

    # ---- inputs ------------------------------------------------------------------------------
    @property
    def downsample(self) -> int:
        """Pixels per semantic latent (32 for EfficientNet)."""
        return self.encoder.config.downsample

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def load_input(self, video) -> tuple[torch.Tensor, float | None]:
        """(T, H, W, 3) uint8 frames from a path, an array or a tensor, and the file's fps."""
        fps = None
        if isinstance(video, (str, os.PathLike)):
            if not os.path.isfile(video):
                raise FileNotFoundError(f"no video file at {str(video)!r}")
            from videosys.utils.video import probe_video, read_video

            video, fps = read_video(probe_video(video))  # a text file (ffmpeg reads it as ANSI art) is refused
        if isinstance(video, np.ndarray):
            video = torch.from_numpy(np.ascontiguousarray(video))
        if not (isinstance(video, torch.Tensor) and video.dtype == torch.uint8 and video.dim() == 4
                and video.shape[-1] == 3):
            desc = f"{video.dtype} {tuple(video.shape)}" if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"video must be a file path or (frames, height, width, 3) uint8 frames, got {desc}")
        return video, fps

    def prepare(self, video: torch.Tensor, size: int, num_frames: int | None) -> torch.Tensor:
        """(T, H, W, 3) uint8 -> (T, 3, H', W') in [-1, 1] on the CPU: first `num_frames` frames, short edge
        resized to `size` (0: kept), centre-cropped to multiples of 32 (and square), checked against the model."""
        if num_frames is not None:
            if not isinstance(num_frames, int) or num_frames < 1:
                raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
            if num_frames > video.shape[0]:
                raise ValueError(f"num_frames={num_frames} but the video has {video.shape[0]} frames")
            video = video[:num_frames]
        window = self.transformer.config.lats_per_vid
        if video.shape[0] < window:
            raise ValueError(f"CascadeV needs at least {window} frames (its DiT window), got {video.shape[0]}")
        t, h, w, _ = video.shape
        scale = size / min(h, w) if size else 1.0
        rh, rw = round(h * scale), round(w * scale)
        side = min(rh, rw)
        div = self.downsample
        ch, cw = (side // div * div,) * 2 if self.config.square else (rh // div * div, rw // div * div)
        tile = self.transformer.config.input_size * self.vae_factor
        if min(ch, cw) < tile:
            raise ValueError(f"the frames are {ch}x{cw} after resizing / cropping to multiples of {div}; the DiT's "
                             f"tile needs at least {tile}x{tile} (set size >= {tile})")
        top, left = (rh - ch) // 2, (rw - cw) // 2
        out = []
        for i in range(0, t, self.config.encode_chunk_size):  # chunks on the device, the whole clip on the CPU
            chunk = video[i:i + self.config.encode_chunk_size].to(self.device).permute(0, 3, 1, 2)  # (n, 3, H, W)
            chunk = chunk.float() / 127.5 - 1
            if (rh, rw) != (h, w):
                chunk = F.interpolate(chunk, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
            out.append(chunk[:, :, top:top + ch, left:left + cw].clamp(-1, 1).cpu())
        return torch.cat(out)  # (T, 3, H', W')

    # ---- the three stages ----------------------------------------------------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(T, 3, H, W) in [-1, 1] -> (T, 16, H/8, W/8): the semantic latent upsampled to the SVD latent
        size and scaled (refine_latent.py's z_ref), the encoder run `encode_chunk_size` frames at a time."""
        n = self.config.encode_chunk_size
        lat = torch.cat([self.encoder(frames[i:i + n].to(self.device, self.encoder.dtype))
                         for i in range(0, len(frames), n)])
        s = self.config.sr_scale
        up = F.interpolate(lat.float(), scale_factor=s, mode="bilinear", align_corners=False)  # (T, 16, H/8, W/8)
        return (up * self.config.scale_factor).to(self.dtype)

    def window_plan(self, frames: int) -> list[tuple[int, torch.Tensor | None]]:
        """(start, blend weights (window, 1, 1, 1) on the device or None) per frame window: fixed per
        reconstruction, so built once, not every step."""
        window = self.transformer.config.lats_per_vid
        plan, last_end = [], 0
        for beg in window_starts(frames, window):
            weights = blend_weights(last_end - beg, window)
            plan.append((beg, None if weights is None else weights.to(self.device, self.dtype).view(-1, 1, 1, 1)))
            last_end = beg + window
        return plan

    def predict(self, latents: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                plan: list | None = None) -> torch.Tensor:
        """Epsilon for (T, 4, h, w) latents: the DiT over frame windows (`plan`, default window_plan) and
        latent tiles."""
        cfg = self.transformer.config
        frames, c_lat, h, w = latents.shape
        window, tile = cfg.lats_per_vid, cfg.input_size
        x = torch.cat([latents.to(self.dtype), cond], dim=1)  # (T, 4 + 16, h, w)
        out = torch.zeros_like(latents, dtype=self.dtype)
        rows, cols = tile_starts(h, tile, self.config.tile_overlap), tile_starts(w, tile, self.config.tile_overlap)
        for beg, weights in plan or self.window_plan(frames):
            chunk = x[beg:beg + window].transpose(0, 1)[None]  # (1, 20, window, h, w)
            eps = torch.empty((window, c_lat, h, w), dtype=self.dtype, device=latents.device)
            for r in rows:
                for c in cols:
                    with self.transformer.cache_part(f"frames {beg} tile {r},{c}"):  # each call its own cache state
                        pred = self.transformer(chunk[..., r:r + tile, c:c + tile], t)  # (1, 8, window, tile, tile)
                    eps[:, :, r:r + tile, c:c + tile] = pred[0, :c_lat].transpose(0, 1)  # epsilon half
            if weights is None:
                out[beg:beg + window] = eps
            else:
                out[beg:beg + window] = out[beg:beg + window] * (1 - weights) + eps * weights
        return out

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(T, 4, h, w) refined latents (scaled) -> (1, T, H, W, 3) uint8 on the CPU, `decode_chunk_size`
        frames per temporal-decoder call (the last chunk may be shorter)."""
        z = (latents.float() / self.config.scale_factor).to(self.vae.dtype)
        n = self.config.decode_chunk_size
        chunks = [self.vae.decode(z[i:i + n], num_frames=len(z[i:i + n])).sample for i in range(0, len(z), n)]
        return torch.cat([self.to_frames(c.transpose(0, 1)[None]) for c in chunks], dim=1)  # (T, 3, H, W) each

    @torch.inference_mode()
    def reconstruct(self, video, seed: int | None = None, num_inference_steps: int | None = None,
                    num_frames: int | None = None, size: int | None = None) -> ReconstructionOutput:
        """Encode to the 1x32x32 latent and reconstruct: `video` a file path or (T, H, W, 3) uint8 frames."""
        seed = self.config.seed if seed is None else seed
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {steps!r}")
        size = self.config.size if size is None else size
        size = self.transformer.config.input_size * self.vae_factor if size is None else size
        num_frames = self.config.num_frames if num_frames is None else num_frames
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be an integer >= 0 (0 keeps the input size), got {size!r}")
        cfg = self.transformer.config
        self.transformer.check_input(cfg.lats_per_vid, cfg.input_size, cfg.input_size)  # its tiles fit the grids / sp
        video, fps = self.load_input(video)
        frames = self.prepare(video, size, num_frames)  # checks sizes and frame counts before any model runs
        t, _, height, width = frames.shape

        start = time.perf_counter()
        with self.stage("prepare"):  # the stages the memory plan (core/offload.py) moves parts for
            cond = self.encode(frames)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        shape = (t, self.vae.config.latent_channels, height // self.vae_factor, width // self.vae_factor)
        latents = torch.randn(shape, generator=generator).to(self.device)
        self.scheduler.set_timesteps(steps)
        timesteps = self.scheduler.timesteps  # CPU: the scheduler indexes its tables without a device sync
        model_timesteps = timesteps.to(self.device)
        latents = latents * self.scheduler.init_noise_sigma
        plan = self.window_plan(t)
        extra = {"generator": generator} if self.config.scheduler == "euler-a" else {}  # its ancestral noise

        def predict(x, i, step_t):  # the DiT over every window and tile of this step
            return self.predict(self.scheduler.scale_model_input(x, step_t), cond, model_timesteps[i:i + 1], plan)

        def step(eps, i, step_t, x):
            return self.scheduler.step(eps.float(), step_t, x, return_dict=False, **extra)[0]

        denoise_start = time.perf_counter()
        # the shared loop: the caches' per-step hooks and the step-output point (a forecast may skip the DiT)
        with self.stage("denoise"):
            latents = self.denoise(latents, timesteps, predict, step, desc="cascadev")
        out = self.finish(latents, partial(self.in_stage, "decode", self.decode), start, denoise_start,
                          len(timesteps))
        reference = self.to_frames(frames.transpose(0, 1)[None])
        return ReconstructionOutput(video=out.video, stats=out.stats, latents=out.latents, input_video=reference,
                                    fps=fps or self.config.fps)

    def generate(self, *args, **kwargs):
        raise ValueError("CascadeV is a video autoencoder: use reconstruct(video) (videosys reconstruct), "
                         "not generate(prompt)")
