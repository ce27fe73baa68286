"""The Wan releases this family runs, their published defaults, and how a checkpoint's kind is recognised.

One `Checkpoint` per release (its Wan-AI/...-Diffusers hub id; the original single-file repositories have the
same name without "-Diffusers"). Sources of the numbers:
  [W21] Wan-Video/Wan2.1 generate.py `_validate_args` (steps: 50 T2V / 40 I2V; shift: 5.0, I2V at 480*832: 3.0;
        guide 5.0 (--sample_guide_scale); frames 81) and wan/configs/shared_config.py (fps 16, sample_neg_prompt),
        wan/configs/wan_i2v_14B.py (the I2V negative prompt: "镜头晃动，" + the shared one),
        wan/configs/__init__.py SUPPORTED_SIZES (1.3B: 480*832; 14B: 720*1280 and 480*832).
  [W22] Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py (shift 12.0, 40 steps, boundary 0.875, guide (3.0 low, 4.0
        high)), wan_i2v_A14B.py (shift 5.0, 40 steps, boundary 0.900, guide (3.5, 3.5)), wan_ti2v_5B.py (shift 5.0,
        50 steps, guide 5.0, fps 24, 121 frames, vae_stride (4, 16, 16)), configs/__init__.py SUPPORTED_SIZES
        (A14B: 720*1280 / 480*832; TI2V-5B: 704*1280).
  [D]   diffusers' WanPipeline docstring example (pipelines/wan/pipeline_wan.py, 0.42): `flow_shift = 5.0  # 5.0
        for 720P, 3.0 for 480P`, used for Wan2.1-T2V-1.3B at 480p; [W21]'s generate.py would use 5.0 there (its
        README suggests 8-12 for 1.3B): set flow_shift= to follow it.
"""

import json
import os
from dataclasses import dataclass

# [W21] shared_config.py sample_neg_prompt (Wan2.2's shared_config.py has the same text)
NEGATIVE_PROMPT = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
                   "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
                   "杂乱的背景，三条腿，背景人很多，倒着走")
I2V_NEGATIVE_PROMPT = "镜头晃动，" + NEGATIVE_PROMPT  # [W21] wan_i2v_14B.py (Wan2.1 I2V only; Wan2.2 keeps the shared one)


@dataclass(frozen=True)
class Checkpoint:
    hub_id: str
    num_frames: int = 81  # [W21] / [W22] frame_num
    height: int = 480
    width: int = 832
    num_inference_steps: int = 50
    guidance_scale: float = 5.0  # the (high-noise) expert's
    guidance_scale_2: float | None = None  # the low-noise expert's (two experts only)
    flow_shift: float = 3.0
    fps: int = 16
    boundary_ratio: float | None = None  # two experts: `transformer` while t >= boundary_ratio * 1000
    image: bool = False  # image-to-video: an image is required
    image_encoder: bool = False  # Wan2.1 I2V: CLIP image tokens
    expand_timesteps: bool = False  # Wan2.2 TI2V-5B: per-token timesteps, the image is the first latent frame
    spatial: int = 16  # the size grid: VAE downsampling x patch
    negative_prompt: str = NEGATIVE_PROMPT

    @property
    def defaults(self) -> dict:
        return dict(num_frames=self.num_frames, height=self.height, width=self.width,
                    num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale, fps=self.fps)


CHECKPOINTS = {
    # [W21] t2v-1.3B: 480*832 only; shift [D] 3.0 (the Diffusers release's scheduler config)
    "t2v-1.3B": Checkpoint("Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    # [W21] t2v-14B: default size 1280*720, shift 5.0
    "t2v-14B": Checkpoint("Wan-AI/Wan2.1-T2V-14B-Diffusers", height=720, width=1280, flow_shift=5.0),
    # [W21] i2v: 40 steps; shift 3.0 at 480*832, 5.0 at 720p
    "i2v-14B-480P": Checkpoint("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", num_inference_steps=40, image=True,
                               image_encoder=True, negative_prompt=I2V_NEGATIVE_PROMPT),
    "i2v-14B-720P": Checkpoint("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", height=720, width=1280, num_inference_steps=40,
                               flow_shift=5.0, image=True, image_encoder=True, negative_prompt=I2V_NEGATIVE_PROMPT),
    # [W22] wan_t2v_A14B.py: sample_guide_scale = (3.0, 4.0) (low noise, high noise)
    "t2v-A14B": Checkpoint("Wan-AI/Wan2.2-T2V-A14B-Diffusers", height=720, width=1280, num_inference_steps=40,
                           guidance_scale=4.0, guidance_scale_2=3.0, flow_shift=12.0, boundary_ratio=0.875),
    # [W22] wan_i2v_A14B.py: sample_guide_scale = (3.5, 3.5)
    "i2v-A14B": Checkpoint("Wan-AI/Wan2.2-I2V-A14B-Diffusers", height=720, width=1280, num_inference_steps=40,
                           guidance_scale=3.5, guidance_scale_2=3.5, flow_shift=5.0, boundary_ratio=0.9, image=True),
    # [W22] wan_ti2v_5B.py: text-to-video, or text+image-to-video when an image is given
    "ti2v-5B": Checkpoint("Wan-AI/Wan2.2-TI2V-5B-Diffusers", num_frames=121, height=704, width=1280, flow_shift=5.0,
                          fps=24, expand_timesteps=True, spatial=32),
}

# the tiny presets: the same kinds at CPU sizes (random weights, offline)
TINY_KINDS = {"tiny": "t2v-1.3B", "tiny-i2v": "i2v-14B-480P", "tiny-a14b": "t2v-A14B", "tiny-ti2v": "ti2v-5B"}
TINY_SIZE = dict(num_frames=9, height=32, width=48, num_inference_steps=8, fps=16)


def tiny_preset(kind: str) -> dict:
    c = CHECKPOINTS[kind]
    size = dict(height=64, width=96) if c.spatial == 32 else {}
    return {**TINY_SIZE, **size, "guidance_scale": c.guidance_scale}


def read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# the original Wan2.2 A14B releases keep each expert in its own folder (wan/configs/wan_t2v_A14B.py:
# high_noise_checkpoint / low_noise_checkpoint)
ORIGINAL_EXPERTS = ("high_noise_model", "low_noise_model")


def original_layout(path: str) -> str | None:
    """"single" for an original Wan folder (config.json with model_type, no model_index.json), "experts" for an
    original Wan2.2 A14B folder (one such folder per expert), None otherwise (a diffusers layout, a hub id)."""
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "model_index.json")):
        return None
    if "model_type" in (read_json(os.path.join(path, "config.json")) or {}):
        return "single"
    if all("model_type" in (read_json(os.path.join(path, e, "config.json")) or {}) for e in ORIGINAL_EXPERTS):
        return "experts"
    return None


def kind_of_folder(folder: str) -> str | None:
    """A local checkpoint's kind from its files (None: not recognised): model_index.json's boundary_ratio /
    expand_timesteps / image_encoder, the transformer config's in_channels / image_dim / width, or an original
    folder's config.json (model_type, dim)."""
    index = read_json(os.path.join(folder, "model_index.json"))
    transformer = read_json(os.path.join(folder, "transformer", "config.json"))
    if index is None:
        layout = original_layout(folder)
        if layout is None:
            return None
        if layout == "experts":
            original = read_json(os.path.join(folder, ORIGINAL_EXPERTS[0], "config.json"))
            return "i2v-A14B" if original["model_type"] == "i2v" or original.get("in_dim") == 36 else "t2v-A14B"
        original = read_json(os.path.join(folder, "config.json"))
        if original["model_type"] == "ti2v" or original.get("in_dim") == 48:
            return "ti2v-5B"
        if original["model_type"] == "i2v":
            return "i2v-14B-480P"  # 480P / 720P: the same model; the name decides below
        return "t2v-1.3B" if original.get("dim", 1536) <= 1536 else "t2v-14B"
    transformer = transformer or {}
    if index.get("expand_timesteps"):
        return "ti2v-5B"
    if index.get("boundary_ratio") is not None:
        return "i2v-A14B" if transformer.get("in_channels", 16) != 16 else "t2v-A14B"
    if transformer.get("image_dim") is not None or (index.get("image_encoder") or [None])[0]:
        return "i2v-14B-480P"
    heads = transformer.get("num_attention_heads", 12)
    return "t2v-1.3B" if heads <= 12 else "t2v-14B"


def kind_of_path(path: str) -> str:
    """The kind a model_path names: a local folder's files (refined by its name: 720P), else the hub id."""
    name = os.path.basename(os.path.normpath(path)).lower()
    kind = kind_of_folder(path) if os.path.isdir(path) else None
    if kind == "i2v-14B-480P" and "720p" in name:
        return "i2v-14B-720P"
    if kind == "t2v-1.3B" and "1.3b" not in name and "14b" in name:
        return "t2v-14B"
    if kind is not None:
        return kind
    for key, c in CHECKPOINTS.items():
        if c.hub_id.lower().removesuffix("-diffusers") in path.lower().removesuffix("-diffusers"):
            return key
    for key in CHECKPOINTS:  # a folder named after a release
        if key.lower() in name:
            return key
    raise ValueError(f"cannot tell which Wan release {path!r} is; pass kind= one of {sorted(CHECKPOINTS)}")
