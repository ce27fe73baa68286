"""Open-Sora 1.2 conditioning: reference images / videos, the mask strategy, looping, prompt flags.

As the release does it (hpcaitech/Open-Sora v1.2.0: scripts/inference.py,
opensora/utils/inference_utils.py, opensora/schedulers/rf/__init__.py); our own code.

Mask strategy: entries separated by ";", each up to six comma-separated numbers (missing ones
take the defaults 0,0,0,0,1,0):

    loop, reference, reference_start, target_start, length, edit_ratio

"in loop `loop`, copy `length` latent frames of reference `reference`, from its latent frame
`reference_start`, to the generation's latent frames from `target_start`". Positions count
*latent* frames (the VAE turns each 17 video frames into 5); a negative start counts from the
end; the length is cut to what both sides hold. With `align` (the release's inference config:
5) both starts snap to a multiple of 5, rounding up only past the half-way point and never
onto the last multiple (find_nearest_point). "0" is image-to-video (the first latent frame from
the reference's first); "0,0,0,-1,1" puts it at the end (snapped to latent frame T-5 with align 5).

Sampling (RFLOW.sample with a mask): a frame with edit_ratio r is held at its reference latent
(and the model sees it at timestep 0, x_mask False) while the step's timestep t > r * 1000;
from the first step with t <= r * 1000 it is noised to t once and then denoised like the
others. r = 0 (the default) holds it for the whole generation. After every step the held
frames are put back to their value before the step.

Loop: each loop after the first takes the last `condition_frame_length` latent frames of the
previous clip (decoded, then encoded again) as its first ones, and the joined video drops the
condition_frame_length // 5 * 17 video frames they repeat: num_frames + (loop - 1) * (num_frames
- condition_frame_length // 5 * 17) frames in all. A prompt "|0|text a|2|text b" changes its text
from loop 2 on.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")  # opensora/datasets/utils.py VID_EXTENSIONS
PROMPT_JSON_KEYS = ("reference_path", "mask_strategy")


# ---- mask strategy -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskEntry:
    """One ";"-separated entry of a mask strategy (defaults: the release's MASK_DEFAULT)."""

    loop: int = 0
    reference: int = 0
    reference_start: int = 0
    target_start: int = 0
    length: int = 1
    edit_ratio: float = 0.0

    def __str__(self) -> str:
        return ",".join(str(getattr(self, name)) for name in _FIELDS)


_FIELDS = ("loop", "reference", "reference_start", "target_start", "length", "edit_ratio")


def parse_mask_strategy(text) -> list[MaskEntry]:
    """The release's mask-strategy string -> its entries (None or "" -> none)."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise ValueError(f"a mask strategy is a string such as '0' or '0,0,0,-1,1;0,1,0,0,1', got {text!r}")
    if not text.strip():
        return []
    entries = []
    for raw in text.split(";"):
        parts = raw.split(",")
        if not raw.strip() or len(parts) > len(_FIELDS):
            raise ValueError(f"mask strategy {text!r}: entry {raw!r} must have 1 to 6 comma-separated numbers "
                             f"({', '.join(_FIELDS)})")
        values = {}
        for name, part in zip(_FIELDS, parts):
            try:
                values[name] = float(part) if name == "edit_ratio" else int(part)
            except ValueError:
                kind = "a number" if name == "edit_ratio" else "an integer"
                raise ValueError(f"mask strategy {text!r}: {name} must be {kind}, got {part.strip()!r} "
                                 f"in entry {raw!r}") from None
        entry = MaskEntry(**values)
        if entry.loop < 0 or entry.reference < 0:
            raise ValueError(f"mask strategy {text!r}: loop and reference indices must be >= 0 in entry {raw!r}")
        if entry.length < 1:
            raise ValueError(f"mask strategy {text!r}: length must be >= 1 in entry {raw!r}")
        if not 0.0 <= entry.edit_ratio <= 1.0:
            raise ValueError(f"mask strategy {text!r}: edit_ratio must lie in [0, 1] in entry {raw!r}")
        entries.append(entry)
    return entries


def find_nearest_point(value: int, point: int, max_value: int) -> int:
    """The release's snapping of a start to a multiple of `point` (round half down, never the last multiple)."""
    t = value // point
    if value % point > point / 2 and t < max_value // point - 1:
        t += 1
    return t * point


def place(entry: MaskEntry, reference_frames: int, target_frames: int, align: int | None = None,
          where: str = "") -> tuple[int, int, int]:
    """(reference_start, target_start, length) of an entry, in latent frames, as apply_mask_strategy places it."""
    ref_start = entry.reference_start + (reference_frames if entry.reference_start < 0 else 0)
    target_start = entry.target_start + (target_frames if entry.target_start < 0 else 0)
    if not 0 <= ref_start < reference_frames:
        raise ValueError(f"mask strategy entry '{entry}'{where}: reference_start {entry.reference_start} is outside "
                         f"reference {entry.reference}, which has {reference_frames} latent frame(s)")
    if not 0 <= target_start < target_frames:
        raise ValueError(f"mask strategy entry '{entry}'{where}: target_start {entry.target_start} is outside the "
                         f"generation's {target_frames} latent frame(s)")
    if align:
        ref_start = find_nearest_point(ref_start, align, reference_frames)
        target_start = find_nearest_point(target_start, align, target_frames)
    length = min(entry.length, target_frames - target_start, reference_frames - ref_start)
    return ref_start, target_start, length


# ---- prompts -----------------------------------------------------------------------------------
def split_prompt_json(prompt: str) -> tuple[str, dict]:
    """'text{"reference_path": ..., "mask_strategy": ...}' -> ('text', {...}), as extract_json_from_prompts."""
    parts = re.split(r"(?=[{])", prompt)
    if len(parts) > 2:
        raise ValueError(f"prompt {prompt!r}: at most one JSON object may follow the text")
    if len(parts) == 1:
        return prompt, {}
    try:
        extra = json.loads(parts[1])
    except json.JSONDecodeError as err:
        raise ValueError(f"prompt {prompt!r}: the JSON after the text does not parse ({err})") from None
    unknown = sorted(set(extra) - set(PROMPT_JSON_KEYS)) if isinstance(extra, dict) else ["(not an object)"]
    if unknown:
        raise ValueError(f"prompt {prompt!r}: JSON keys must be {PROMPT_JSON_KEYS}, got {unknown}")
    return parts[0], extra


def loop_segments(prompt: str) -> list[tuple[int, str]]:
    """'|0|text a|2|text b' -> [(0, 'text a'), (2, 'text b')]: the text from each loop index on (split_prompt)."""
    if not prompt.startswith("|0|"):
        return [(0, prompt)]
    parts = prompt.split("|")[1:]
    if len(parts) % 2:
        raise ValueError(f"prompt {prompt!r}: loop prompts alternate |index|text, e.g. '|0|a cat|2|a dog'")
    segments = []
    for index, text in zip(parts[::2], parts[1::2]):
        if not index.strip().isdigit():
            raise ValueError(f"prompt {prompt!r}: {index!r} is not a loop index")
        if segments and int(index) <= segments[-1][0]:
            raise ValueError(f"prompt {prompt!r}: loop indices must increase")
        if not text.strip():
            raise ValueError(f"prompt {prompt!r}: the text from loop {index} is empty")
        segments.append((int(index), text.strip()))
    return segments


def prompt_for_loop(segments: list[tuple[int, str]], loop_index: int) -> str:
    """The text of the last segment starting at or before `loop_index` (extract_prompts_loop)."""
    return [text for start, text in segments if start <= loop_index][-1]


def append_prompt_flags(prompt: str, aes: float | None = None, flow: float | None = None,
                        camera_motion: str | None = None) -> str:
    """The release's score suffixes (append_score_to_prompts); a prompt that already names one keeps its own."""
    if aes is not None and "aesthetic score:" not in prompt:
        prompt = f"{prompt} aesthetic score: {aes:.1f}."
    if flow is not None and "motion score:" not in prompt:
        prompt = f"{prompt} motion score: {flow:.1f}."
    if camera_motion is not None and "camera motion:" not in prompt:
        prompt = f"{prompt} camera motion: {camera_motion}."
    return prompt


def check_prompt_flags(aes, flow, camera_motion) -> None:
    for name, value in (("aes", aes), ("flow", flow)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise ValueError(f"{name} must be a number or None, got {value!r}")
    if camera_motion is not None and (not isinstance(camera_motion, str) or not camera_motion.strip()):
        raise ValueError(f"camera_motion must be a non-empty string (e.g. 'pan right') or None, got {camera_motion!r}")


# ---- loop length arithmetic --------------------------------------------------------------------
def condition_video_frames(condition_frame_length: int, chunk_frames: int = 17, chunk_latents: int = 5) -> int:
    """Video frames the condition latent frames of a loop repeat (the release's dframe_to_frame: 5 -> 17)."""
    return condition_frame_length // chunk_latents * chunk_frames


def looped_num_frames(num_frames: int, loop: int, condition_frame_length: int, chunk_frames: int = 17,
                      chunk_latents: int = 5) -> int:
    """Frames of a looped video: the first clip whole, every later one without the frames it repeats."""
    repeated = condition_video_frames(condition_frame_length, chunk_frames, chunk_latents)
    return num_frames + (loop - 1) * (num_frames - repeated)


def check_loop(loop, condition_frame_length, condition_frame_edit, latent_frames: int, chunk_latents: int = 5,
               chunk_frames: int = 17):
    if isinstance(loop, bool) or not isinstance(loop, int) or loop < 1:
        raise ValueError(f"loop must be a positive integer, got {loop!r}")
    if isinstance(condition_frame_length, bool) or not isinstance(condition_frame_length, int):
        raise ValueError(f"condition_frame_length must be an integer (latent frames), got {condition_frame_length!r}")
    if not isinstance(condition_frame_edit, (int, float)) or not 0.0 <= condition_frame_edit <= 1.0:
        raise ValueError(f"condition_frame_edit must lie in [0, 1], got {condition_frame_edit!r}")
    if loop == 1:
        return
    if condition_frame_length < 1 or condition_frame_length % chunk_latents:
        raise ValueError(f"condition_frame_length={condition_frame_length}: looping takes a positive multiple of "
                         f"{chunk_latents} latent frames (one VAE chunk of 17 video frames each), e.g. 5")
    if condition_frame_length >= latent_frames:
        enough = (condition_frame_length // chunk_latents + 1) * chunk_frames  # one more whole VAE chunk
        raise ValueError(f"condition_frame_length={condition_frame_length} leaves nothing new to generate in a clip "
                         f"of {latent_frames} latent frames: with loop={loop}, give num_frames={enough} or more "
                         "(or fewer condition frames)")


# ---- references --------------------------------------------------------------------------------
def _resize_crop_image(image, height: int, width: int) -> np.ndarray:
    """PIL image -> (H, W, 3) uint8: bicubic resize to cover, centre crop (the release's resize_crop_to_fill)."""
    from PIL import Image

    w, h = image.size
    rh, rw = height / h, width / w
    if rh > rw:
        sh, sw = height, round(w * rh)
        i, j = 0, int(round((sw - width) / 2.0))
    else:
        sh, sw = round(h * rw), width
        i, j = int(round((sh - height) / 2.0)), 0
    arr = np.array(image.resize((sw, sh), Image.BICUBIC))
    return arr[i:i + height, j:j + width]


def _resize_crop_video(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, C, H, W) float -> (T, C, height, width): bilinear resize to cover, then crop (the release's
    video_transforms.resize_crop_to_fill)."""
    h, w = frames.shape[-2:]
    if (h, w) == (height, width):
        return frames
    rh, rw = height / h, width / w
    if rh > rw:
        sh, sw = height, round(w * rh)
        i, j = 0, int(round(sw - width) / 2.0)  # the release rounds before halving (truncates a half)
    else:
        sh, sw = round(h * rw), width
        i, j = int(round(sh - height) / 2.0), 0
    frames = F.interpolate(frames, size=(sh, sw), mode="bilinear", align_corners=False)
    return frames[..., i:i + height, j:j + width]


def _normalise(frames01: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) in [0, 1] -> (C, T, H, W) in [-1, 1] (Normalize(0.5, 0.5))."""
    return (frames01 * 2 - 1).permute(1, 0, 2, 3).contiguous()


def load_reference(ref, height: int, width: int) -> torch.Tensor:
    """A reference -> (3, T, height, width) float32 pixels in [-1, 1], resized to cover and centre-cropped.

    ref: an image or video file; a uint8 tensor / array of frames (H, W, 3) or (T, H, W, 3), e.g. a
    generated `out.video[0]`; a PIL image; or a float tensor (3, H, W) / (3, T, H, W) in [-1, 1], the VAE's
    layout. Images go through PIL's bicubic resize and videos through bilinear interpolation, as the release.
    """
    from PIL import Image

    if isinstance(ref, (str, os.PathLike)):
        path = os.fspath(ref)
        ext = os.path.splitext(path)[1].lower()
        if ext not in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
            raise ValueError(f"reference {path!r}: unsupported file type {ext!r}; images {IMAGE_EXTENSIONS}, "
                             f"videos {VIDEO_EXTENSIONS}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"reference {path!r} does not exist")
        if ext in IMAGE_EXTENSIONS:
            with Image.open(path) as image:
                ref = image.convert("RGB")
        else:
            from videosys.utils.video import read_video

            ref = torch.from_numpy(read_video(path)[0])
    if isinstance(ref, Image.Image):
        arr = _resize_crop_image(ref.convert("RGB"), height, width)
        return _normalise(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255)
    if isinstance(ref, np.ndarray):
        ref = torch.from_numpy(np.ascontiguousarray(ref))
    if not isinstance(ref, torch.Tensor):
        raise ValueError(f"a reference is a file path, a PIL image or a tensor, got {type(ref).__name__}")
    ref = ref.detach().cpu()
    if ref.dtype == torch.uint8:
        if ref.dim() not in (3, 4) or ref.shape[-1] != 3:
            raise ValueError(f"a uint8 reference is frames (H, W, 3) or (T, H, W, 3), got shape {tuple(ref.shape)}")
        if ref.dim() == 3:  # one image: the release's image path (PIL, bicubic)
            return load_reference(Image.fromarray(ref.numpy()), height, width)
        frames = ref.permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W)
        return _normalise(_resize_crop_video(frames, height, width))
    if not ref.is_floating_point():
        raise ValueError(f"a reference tensor is uint8 frames or float pixels in [-1, 1], got dtype {ref.dtype}")
    if ref.dim() == 3:
        ref = ref[:, None]
    if ref.dim() != 4 or ref.shape[0] != 3:
        raise ValueError(f"a float reference is pixels (3, H, W) or (3, T, H, W) in [-1, 1], got shape "
                         f"{tuple(ref.shape)}")
    if not bool(torch.isfinite(ref).all()):
        raise ValueError("the reference tensor holds non-finite values")
    return _resize_crop_video(ref.float().transpose(0, 1), height, width).transpose(0, 1).contiguous()


def references_of(value) -> list:
    """One prompt's references: None / "" -> [], a ";"-joined path string -> its paths, a list -> its items."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(";")]
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if item is None or (isinstance(item, str) and not item.strip()):
                raise ValueError(f"an empty item in a prompt's list of references would shift the indices the mask "
                                 f"strategy names; got {value!r}")
            out.extend(references_of(item))
        return out
    return [value]


# ---- per generation: requests, plans -----------------------------------------------------------
@dataclass
class StepPlan:
    """The per-step masks of one clip's sampling (RFLOW.sample with a mask), fixed before the loop.

    active[i] (B, T): frames the model denoises at step i (x_mask; False = held at its latent, seen at
    t = 0); fresh[i]: frames that become active at step i and are noised to that step's timestep first.
    """

    active: torch.Tensor  # (N, B, T) bool, on the device
    fresh: torch.Tensor  # (N, B, T) bool, on the device
    noise_steps: list[int]  # steps with fresh frames (host side: no device sync in the loop)
    timesteps: torch.Tensor  # (N,) the scheduler's timesteps, on the device
    generator: torch.Generator  # CPU: the noise of fresh frames

    @classmethod
    def build(cls, mask: torch.Tensor, timesteps: torch.Tensor, timestep_values: list[float],
              generator: torch.Generator, num_timesteps: int = 1000) -> "StepPlan":
        """mask (B, T) float on the CPU: 1 = generate, r < 1 = held while t > r * num_timesteps.

        Planned on the host from `timestep_values` (the same numbers as the device `timesteps`), in fp32
        as the release compares them, so the loop never waits for the device.
        """
        ts = torch.tensor(timestep_values, dtype=torch.float32)
        active = (mask.float() * num_timesteps)[None] >= ts[:, None, None]  # (N, B, T): the release's mask_t_upper
        before = torch.cat([(mask == 1)[None], active[:-1]])  # its noise_added before each step
        fresh = active & ~before
        noise_steps = [i for i in range(len(ts)) if bool(fresh[i].any())]
        device = timesteps.device
        return cls(active.to(device), fresh.to(device), noise_steps, timesteps, generator)

    def before_step(self, i: int, latents: torch.Tensor, scheduler) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise the frames that start being edited at step i; return (latents, x_mask (B, T))."""
        if i in self.noise_steps:
            noise = torch.randn(latents.shape, generator=self.generator, dtype=torch.float32).to(latents.device)
            t = self.timesteps[i].expand(latents.shape[0])
            noised = scheduler.add_noise(latents, noise, t).to(latents.dtype)
            latents = torch.where(self.fresh[i][:, None, :, None, None], noised, latents)
        return latents, self.active[i]

    def after_step(self, i: int, stepped: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """Held frames back to their value before the step (the sampler's final torch.where)."""
        return torch.where(self.active[i][:, None, :, None, None], stepped, before)


@dataclass
class Conditioning:
    """Everything a generation conditions on, checked before any compute.

    references[b]: prompt b's references, pixels (3, T, H, W) until `encode`, latents (C, T', h, w)
    after; strategies[b]: its mask entries (loops append theirs).
    """

    segments: list[list[tuple[int, str]]]  # per prompt: (first loop, text)
    references: list[list[torch.Tensor]]
    strategies: list[list[MaskEntry]]
    loop: int = 1
    condition_frame_length: int = 5
    condition_frame_edit: float = 0.0
    align: int | None = 5
    chunk_frames: int = 17
    chunk_latents: int = 5
    _generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def conditioned(self) -> bool:
        return self.loop > 1 or any(self.strategies)

    def prompts(self, loop_index: int) -> list[str]:
        return [prompt_for_loop(s, loop_index) for s in self.segments]

    def num_frames(self, num_frames: int) -> int:
        return looped_num_frames(num_frames, self.loop, self.condition_frame_length, self.chunk_frames,
                                 self.chunk_latents)

    def encode(self, vae, seed: int, device, dtype) -> None:
        """Encode every reference (posterior samples, as the release; reproducible from the seed)."""
        self._generator = torch.Generator("cpu").manual_seed(int(seed))
        self.references = [[self._encode(vae, r[None], device, dtype)[0] for r in refs] for refs in self.references]

    def _encode(self, vae, pixels: torch.Tensor, device, dtype) -> torch.Tensor:
        return vae.encode(pixels.to(device=device, dtype=dtype), generator=self._generator).float()

    def plan(self, loop_index: int, latents: torch.Tensor, timesteps: torch.Tensor, timestep_values: list[float],
             generator: torch.Generator, num_timesteps: int = 1000) -> StepPlan | None:
        """Write this loop's references into `latents` (in place) and plan its steps; None: nothing conditioned."""
        b, _, t = latents.shape[:3]
        mask = torch.ones(b, t)
        any_entry = False
        for i, (refs, entries) in enumerate(zip(self.references, self.strategies)):
            for entry in entries:
                if entry.loop != loop_index:
                    continue
                ref = refs[entry.reference]
                ref_start, target_start, length = place(entry, ref.shape[1], t, self.align)
                latents[i, :, target_start:target_start + length] = ref[:, ref_start:ref_start + length].to(latents)
                mask[i, target_start:target_start + length] = entry.edit_ratio
                any_entry = True
        if not any_entry:
            return None
        return StepPlan.build(mask, timesteps, timestep_values, generator, num_timesteps)

    def append_generated(self, loop_index: int, video: torch.Tensor, vae, device, dtype) -> None:
        """The next loop conditions on the last condition_frame_length latent frames of this clip (append_generated)."""
        latents = self._encode(vae, video, device, dtype)
        n = self.condition_frame_length
        for i, refs in enumerate(self.references):
            refs.append(latents[i])
            self.strategies[i].append(MaskEntry(loop_index, len(refs) - 1, -n, 0, n, self.condition_frame_edit))

    def join(self, clips: list[torch.Tensor]) -> torch.Tensor:
        """Clips (B, 3, F, H, W) -> one video, later clips without the frames they repeat."""
        cut = condition_video_frames(self.condition_frame_length, self.chunk_frames, self.chunk_latents)
        return torch.cat([clips[0]] + [c[:, :, cut:] for c in clips[1:]], dim=2)


def _per_prompt(value, n: int, single: bool, name: str) -> list:
    if single:
        return [value]
    if value is None:
        return [None] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ValueError(f"with {n} prompts, {name} must be None or a list of {n} (one per prompt), got {value!r}")
    return list(value)


def prepare(prompt, reference=None, mask_strategy=None, *, loop: int = 1, condition_frame_length: int = 5,
            condition_frame_edit: float = 0.0, align: int | None = 5, height: int, width: int,
            latent_frames: int, vae_latent_frames, aes=None, flow=None, camera_motion=None,
            chunk_frames: int = 17) -> Conditioning:
    """Parse and check a generation's conditioning before any compute; references are loaded (pixels).

    prompt: a string or a list. For one prompt, `reference` is a path (";" joins several), a tensor, or
    a list of these (indexed by the mask strategy's reference number) and `mask_strategy` a string; for a
    list of prompts each is a list with one such item per prompt. A JSON object after a prompt's text
    ({"reference_path": ..., "mask_strategy": ...}) overrides both for that prompt. A reference without a
    mask strategy takes "0" (image-to-video from its first frame, as the release's Gradio app).
    `vae_latent_frames(n)`: the VAE's latent frame count of n video frames.
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    refs_in = _per_prompt(reference, len(prompts), single, "reference")
    masks_in = _per_prompt(mask_strategy, len(prompts), single, "mask_strategy")
    check_prompt_flags(aes, flow, camera_motion)
    chunk_latents = vae_latent_frames(chunk_frames)
    check_loop(loop, condition_frame_length, condition_frame_edit, latent_frames, chunk_latents, chunk_frames)
    if align is not None and (isinstance(align, bool) or not isinstance(align, int) or align < 1):
        raise ValueError(f"align must be a positive integer (latent frames) or None, got {align!r}")

    segments, references, strategies = [], [], []
    for b, text in enumerate(prompts):
        text, extra = split_prompt_json(text)
        ref = extra.get("reference_path", refs_in[b])
        strategy = extra.get("mask_strategy", masks_in[b])
        refs = references_of(ref)
        if refs and (strategy is None or (isinstance(strategy, str) and not strategy.strip())):
            strategy = "0"
        entries = parse_mask_strategy(strategy)
        where = f" (prompt {b})" if len(prompts) > 1 else ""
        pixels = [load_reference(r, height, width) for r in refs]
        frames = [vae_latent_frames(p.shape[1]) for p in pixels]
        for entry in entries:
            if entry.loop >= loop:
                raise ValueError(f"mask strategy entry '{entry}'{where} is for loop {entry.loop}, but loop={loop}")
            if entry.reference >= len(refs):
                raise ValueError(f"mask strategy entry '{entry}'{where} names reference {entry.reference}, but "
                                 f"{len(refs)} reference(s) are given")
            place(entry, frames[entry.reference], latent_frames, align, where)
        if not text.strip():
            raise ValueError(f"prompt {b} is empty once its JSON is removed")
        flagged = [(start, append_prompt_flags(t, aes, flow, camera_motion)) for start, t in loop_segments(text)]
        segments.append(flagged)
        references.append(pixels)
        strategies.append(entries)
    return Conditioning(segments, references, strategies, loop, condition_frame_length, float(condition_frame_edit),
                        align, chunk_frames=chunk_frames, chunk_latents=chunk_latents)
