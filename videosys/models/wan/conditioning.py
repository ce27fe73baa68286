"""The image conditioning of Wan's image-to-video releases, as diffusers' WanImageToVideoPipeline builds it.

Wan2.1 I2V / Wan2.2 I2V-A14B: the image followed by num_frames - 1 black frames is VAE-encoded (the posterior's
mode) and normalised; a mask marks the given frame (4 mask channels per latent frame: the VAE's 4x temporal
packing); the transformer sees [latents, mask, image latents] on the channels (16 + 4 + 16 = 36). Wan2.1 I2V also
cross-attends to the image's CLIP tokens (the vision tower's second-to-last hidden states).

Wan2.2 TI2V-5B (`expand_timesteps`): the image alone is encoded to the first latent frame, which replaces the
latents' first frame in every model input, with timestep 0 for its tokens (per-token timesteps); the other tokens
get the step's timestep. Without an image every token gets it. The final latents take the image's first frame.
"""

import os

import numpy as np
import torch

from videosys.core.config import RequestError, check_media_file


def check_image(image, required: bool, accepted: bool, kind: str):
    """The request's image as given (checked), None when none is given and none is needed; a text-to-video
    release (not `accepted`) refuses one rather than ignore it."""
    if image is None:
        if required:
            raise RequestError("image", f"{kind} is an image-to-video release: give image= (a file path or an "
                               "(H, W, 3) array)")
        return None
    if not accepted:
        raise RequestError("image", f"{kind} is a text-to-video release: it takes no image (the image-to-video "
                           "releases: i2v-14B-480P / 720P, i2v-A14B, ti2v-5B)")
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise RequestError("image", f"image file {str(image)!r} does not exist")
        return check_media_file(image, "image")
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return image
    shape = tuple(np.shape(image))
    if len(shape) != 3 or shape[-1] != 3 or min(shape[:2]) < 1:
        raise RequestError("image", f"image must be a file path, a PIL image or an (H, W, 3) array, got shape {shape}")
    return image


def load_image(image):
    """A checked request image -> a PIL RGB image."""
    from PIL import Image

    if isinstance(image, str):
        return Image.open(image).convert("RGB")
    if hasattr(image, "convert"):
        return image.convert("RGB")
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8:  # floats in [0, 1]
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def prepare_image(pipe, run, image) -> None:
    """run.state: "condition" (normalised latents, + the mask for Wan2.1-style I2V), "image_embeds" (CLIP)."""
    from diffusers.video_processor import VideoProcessor

    v, vae = run.values, pipe.vae
    if pipe.image_encoder is not None:
        pixels = pipe.image_processor(images=image, return_tensors="pt").to(pipe.image_encoder.device)
        hidden = pipe.image_encoder(**pixels, output_hidden_states=True).hidden_states[-2]
        run.state["image_embeds"] = hidden.to(device=pipe.device, dtype=pipe.dtype)
    processor = VideoProcessor(vae_scale_factor=vae.config.scale_factor_spatial)
    frame = processor.preprocess(image, height=v["height"], width=v["width"]).to(pipe.device, torch.float32)
    frame = frame.unsqueeze(2)  # (1, 3, 1, H, W)
    expand = pipe.config.checkpoint.expand_timesteps
    if not expand:  # the image, then black frames
        frame = torch.cat([frame, frame.new_zeros(1, 3, v["num_frames"] - 1, v["height"], v["width"])], dim=2)
    latents = vae.encode(frame.to(vae.dtype)).latent_dist.mode().float()
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents)
    latents = ((latents - mean) * inv_std).repeat(len(run.prompts), 1, 1, 1, 1)
    _, _, frames, h, w = pipe.latent_shape(run)
    if expand:
        mask = torch.ones(1, 1, frames, h, w, device=pipe.device)
        mask[:, :, 0] = 0
        run.state["condition"], run.state["first_frame_mask"] = latents, mask
        return
    temporal = vae.config.scale_factor_temporal
    mask = torch.zeros(len(run.prompts), 1, v["num_frames"], h, w, device=pipe.device)
    mask[:, :, 0] = 1
    mask = torch.cat([mask[:, :, :1].repeat_interleave(temporal, dim=2), mask[:, :, 1:]], dim=2)
    mask = mask.view(len(run.prompts), -1, temporal, h, w).transpose(1, 2)  # (B, 4, F_latent, h, w)
    run.state["condition"] = torch.cat([mask, latents], dim=1)


def model_input(pipe, run, latents: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformer's input for `latents` (a batch of B or 2B) and its timestep: (B,) or per token (B, N)."""
    batch = latents.shape[0]
    condition = run.state.get("condition")
    if not pipe.config.checkpoint.expand_timesteps:
        if condition is not None:
            latents = torch.cat([latents, condition.repeat(batch // condition.shape[0], 1, 1, 1, 1)], dim=1)
        return latents, t.expand(batch)
    mask = run.state.get("first_frame_mask")
    if mask is None:  # text-to-video: every token at t
        mask = torch.ones_like(latents[:1, :1])
    else:
        condition = condition.repeat(batch // condition.shape[0], 1, 1, 1, 1)
        latents = (1 - mask) * condition + mask * latents
    _, p_h, p_w = pipe.transformer.config.patch_size
    timestep = (mask[0, 0][:, ::p_h, ::p_w] * t).flatten()  # diffusers' temp_ts
    return latents, timestep.unsqueeze(0).expand(batch, -1)


def final_latents(run, latents: torch.Tensor) -> torch.Tensor:
    """TI2V with an image: its first frame replaces the sampled one (diffusers, after the loop)."""
    mask = run.state.get("first_frame_mask")
    if mask is None:
        return latents
    return (1 - mask) * run.state["condition"] + mask * latents
