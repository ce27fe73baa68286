"""Wan's components: tiny random ones (offline, CPU sizes) and the releases' (diffusers or original layout).

Components are diffusers' / transformers' own classes (AutoencoderKLWan, UMT5EncoderModel + the UMT5 tokenizer,
UniPCMultistepScheduler, CLIPVisionModel + CLIPImageProcessor); the transformer is ours (transformer.py).
"""

import os

import torch

from videosys.models.wan.checkpoints import CHECKPOINTS, ORIGINAL_EXPERTS, original_layout, read_json
from videosys.models.wan.transformer import WanTransformer3DModel, WanTransformerConfig
from videosys.utils import text as text_stack

TEXT_DIM, IMAGE_DIM = 32, 8
MAX_TEXT_LENGTH = 512  # diffusers' WanPipeline max_sequence_length; its I2V transformer needs exactly 512 text tokens


def tiny_transformer_config(kind: str) -> WanTransformerConfig:
    c = CHECKPOINTS[kind]
    fields = dict(num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16, text_dim=TEXT_DIM,
                  freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=64)
    if c.expand_timesteps:  # TI2V-5B: the 48-channel VAE's latents
        fields.update(in_channels=48, out_channels=48)
    elif c.image:  # the latents, then the first frame's mask (4 channels) and its latents (16)
        fields.update(in_channels=36)
    if c.image_encoder:  # Wan2.1 I2V: CLIP image tokens
        fields.update(image_dim=IMAGE_DIM, added_kv_proj_dim=fields["num_attention_heads"] * 12)
    return WanTransformerConfig(**fields)


def tiny_vae(kind: str):
    """AutoencoderKLWan at tiny widths: Wan2.1's VAE (16 channels, 4x8x8) or Wan2.2's (48 channels, 4x16x16)."""
    from diffusers import AutoencoderKLWan

    common = dict(base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    if CHECKPOINTS[kind].expand_timesteps:
        return AutoencoderKLWan(**common, decoder_base_dim=4, z_dim=48, is_residual=True, in_channels=12,
                                out_channels=12, patch_size=2, scale_factor_spatial=16,
                                latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    return AutoencoderKLWan(**common, z_dim=16)


def tiny_text_encoder(vocab_size: int, seed: int):
    """A 2-layer UMT5 encoder (Wan's text encoder is umt5-xxl's)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=2 * TEXT_DIM, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UMT5EncoderModel(config).eval()


def clip_image_processor(**fields):
    try:  # transformers 5 without torchvision: the PIL backend, named (else a warning per construction)
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:
        from transformers import CLIPImageProcessor as cls
    return cls(**fields)


def tiny_image_encoder(seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=IMAGE_DIM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config).eval()
    return model, clip_image_processor(crop_size=32, size={"shortest_edge": 32})


def scheduler(flow_shift: float, folder: str | None = None):
    """UniPC with flow prediction: a checkpoint's scheduler config, else diffusers' WanPipeline default
    (UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000)); the
    flow shift is the config's (the release's published one unless set)."""
    from diffusers import UniPCMultistepScheduler

    values = read_json(os.path.join(folder, "scheduler_config.json")) if folder else None
    values = {k: v for k, v in (values or {}).items() if not k.startswith("_")}
    values = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "num_train_timesteps": 1000, **values}
    return UniPCMultistepScheduler.from_config({**values, "flow_shift": flow_shift})


def tiny_components(kind: str, seed: int = 0) -> dict:
    """Every component of a tiny `kind` (random weights, seeded; the two experts differ)."""
    tokenizer = text_stack.build_tiny_tokenizer(MAX_TEXT_LENGTH)
    parts = dict(tokenizer=tokenizer, text_encoder=tiny_text_encoder(len(tokenizer), seed))
    c = CHECKPOINTS[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts["transformer"] = WanTransformer3DModel(tiny_transformer_config(kind)).eval()
        if c.boundary_ratio is not None:
            parts["transformer_2"] = WanTransformer3DModel(tiny_transformer_config(kind)).eval()
        parts["vae"] = tiny_vae(kind).eval()
    if c.image_encoder:
        parts["image_encoder"], parts["image_processor"] = tiny_image_encoder(seed)
    return parts


def load_components(path: str, kind: str, dtype: torch.dtype, vae_path: str | None = None,
                    text_encoder_path: str | None = None, image_encoder_path: str | None = None) -> dict:
    """A release's components: the diffusers layout (model_index.json and one folder per part) or the original
    single-file layout (config.json with model_type, diffusion_pytorch_model*.safetensors: the transformer; the VAE,
    text encoder (+ tokenizer) and image encoder then come from diffusers-layout folders given in their own fields)."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    from videosys.models.modules.pretrained import load_pretrained
    from videosys.utils.hub import resolve_dir

    c = CHECKPOINTS[kind]
    layout = original_layout(path)
    parts = {}
    if layout is not None:
        missing = [name for name, value, needed in (("vae_path", vae_path, True),
                                                   ("text_encoder_path", text_encoder_path, True),
                                                   ("image_encoder_path", image_encoder_path, c.image_encoder))
                   if needed and value is None]
        if missing:
            raise ValueError(f"{path} is an original Wan folder (config.json with model_type, no model_index.json): "
                             f"it holds the transformer only; give {', '.join(missing)} (a Wan-AI/...-Diffusers folder "
                             "or hub id with vae/, text_encoder/ + tokenizer/, image_encoder/ + image_processor/)")
        if layout == "experts":  # Wan2.2 A14B: high_noise_model/, low_noise_model/
            high, low = (os.path.join(path, name) for name in ORIGINAL_EXPERTS)
            parts["transformer"] = WanTransformer3DModel.from_original(high, dtype=dtype)
            parts["transformer_2"] = WanTransformer3DModel.from_original(low, dtype=dtype)
        else:
            parts["transformer"] = WanTransformer3DModel.from_original(path, dtype=dtype)
    else:
        parts["transformer"] = WanTransformer3DModel.from_pretrained(path, "transformer", dtype=dtype)
        if c.boundary_ratio is not None:
            parts["transformer_2"] = WanTransformer3DModel.from_pretrained(path, "transformer_2", dtype=dtype)
    vae_root, text_root = vae_path or path, text_encoder_path or path
    # the Wan VAE runs in fp32 (diffusers' Wan docs: vae = AutoencoderKLWan.from_pretrained(..., torch.float32))
    parts["vae"] = load_pretrained(AutoencoderKLWan, resolve_dir(vae_root, "vae"), torch_dtype=torch.float32).eval()
    parts["tokenizer"] = load_pretrained(AutoTokenizer, resolve_dir(text_root, "tokenizer"))
    parts["text_encoder"] = load_pretrained(UMT5EncoderModel, resolve_dir(text_root, "text_encoder"),
                                            dtype=dtype).eval()
    if c.image_encoder:
        from transformers import CLIPVisionModel

        image_root = image_encoder_path or path
        parts["image_encoder"] = load_pretrained(CLIPVisionModel, resolve_dir(image_root, "image_encoder"),
                                                 dtype=torch.float32).eval()
        values = read_json(os.path.join(resolve_dir(image_root, "image_processor"), "preprocessor_config.json")) or {}
        parts["image_processor"] = clip_image_processor(**{k: v for k, v in values.items()
                                                            if not k.startswith("_") and k != "image_processor_type"})
    return parts


# the releases' transformer shapes beside WanTransformerConfig's defaults (Wan2.1-T2V-1.3B); transformer.py's
# docstring names each release's config.json values
RELEASE_SHAPES = {
    "t2v-1.3B": {},
    "t2v-14B": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40),
    "t2v-A14B": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40),
    "ti2v-5B": dict(num_attention_heads=24, ffn_dim=14336, in_channels=48, out_channels=48, num_layers=30),
}


def architecture(kind: str) -> dict:
    """A text-to-video release's components without weights (core/planner.py builds them on the meta device):
    the transformer(s) at the release's shape, the Wan2.1 or Wan2.2 VAE, umt5-xxl."""
    from diffusers import AutoencoderKLWan

    from videosys.models.modules.architectures import umt5_xxl_encoder

    if kind not in RELEASE_SHAPES:
        raise ValueError(f"the memory planner covers the text-to-video Wan releases ({', '.join(RELEASE_SHAPES)}), "
                         f"not {kind!r} yet")
    shape = RELEASE_SHAPES[kind]
    parts = dict(transformer=WanTransformer3DModel(WanTransformerConfig(**shape)).eval(),
                 text_encoder=umt5_xxl_encoder(), tokenizer=text_stack.build_tiny_tokenizer(MAX_TEXT_LENGTH))
    if CHECKPOINTS[kind].boundary_ratio is not None:
        parts["transformer_2"] = WanTransformer3DModel(WanTransformerConfig(**shape)).eval()
    if CHECKPOINTS[kind].expand_timesteps:  # Wan2.2's 48-channel VAE (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/)
        parts["vae"] = AutoencoderKLWan(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True,
                                        in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                                        dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                        temperal_downsample=[False, True, True],
                                        latents_mean=[0.0] * 48, latents_std=[1.0] * 48).eval()
    else:
        parts["vae"] = AutoencoderKLWan().eval()  # diffusers' defaults are Wan2.1's VAE
    return parts
