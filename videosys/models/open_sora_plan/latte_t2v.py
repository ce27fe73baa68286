"""Open-Sora-Plan v1.1 LatteT2V: our Latte transformer (videosys.models.latte) with the v1.1 release's config.

Loads the transformer folders of LanguageBind/Open-Sora-Plan-v1.1.0 (65x512x512, 221x512x512) unchanged:
config.json fields and state-dict keys are the release's (LatteT2V-XL/122, opensora/models/diffusion/latte/ at
tag v1.1.0). Its blocks are Latte's: adaLN-single spatial blocks (self-attention within a frame, cross-attention
to the T5 tokens, MLP) alternating with temporal blocks (self-attention across frames, MLP), the learned-sigma
output (8 channels: epsilon, variance), the fixed 2D sin-cos patch positions and a sin-cos table over frames
added before the first temporal block. So the whole forward, DSP sequence parallelism, TeaCache and PAB are
LatteTransformer3DModel's; this file holds only what differs:
- config.json: `sample_size` is [h, w], and the release's extra fields (use_rope, compress_kv_factor,
  attention_mode, model_max_length, ...). The released checkpoints use neither RoPE nor KV compression.
- frame positions are divided by `interpolation_scale_1d`, by default from video_length (17 -> 1, 56 -> 3).
- `caption_projection.y_embedding` (120 x caption_channels): the training's null caption for class dropout. It
  is in the checkpoint (a buffer), never read at inference (the pipeline encodes a negative prompt).
Inference only: image-video joint training (use_image_num > 0) appends images to the frame axis during training;
at inference the release calls the model with use_image_num=0, which is what this forward computes.
The release's temporal block names its MLP norm `norm3` (here `norm2`); both have no weights
(norm_elementwise_affine=False), so the keys agree.
"""

from dataclasses import dataclass, field

import torch

from videosys.models.latte.transformer import LatteTransformer3DModel, LatteTransformerConfig

NULL_CAPTION_TOKENS = 120  # CaptionProjection(num_tokens=120) of the release: y_embedding's length


@dataclass
class LatteT2VConfig(LatteTransformerConfig):
    """LatteT2V config.json fields; defaults are the 65x512x512 model's (LatteT2V-XL/122 as trained by
    opensora/train/train_t2v.py at v1.1.0: 28 x (spatial + temporal) blocks, 16 heads x 72, 512 px -> 64 latents,
    65 frames -> video_length 17). The 221x512x512 model differs in video_length (56)."""

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = 8
    num_layers: int = 28
    cross_attention_dim: int | None = 1152
    sample_size: list[int] = field(default_factory=lambda: [64, 64])
    caption_channels: int = 4096
    video_length: int = 17
    patch_size_t: int = 1
    norm_num_groups: int = 32
    num_vector_embeds: int | None = None
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    double_self_attention: bool = False
    upcast_attention: bool = False
    attention_type: str = "default"
    attention_mode: str = "xformers"  # the release's kernel switch; we always use PyTorch SDPA
    use_rope: bool = False
    model_max_length: int = 300
    rope_scaling_type: str = "linear"
    compress_kv_factor: int = 1
    interpolation_scale_1d: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.sample_size, int):
            self.sample_size = [self.sample_size, self.sample_size]
        self.sample_size = list(self.sample_size)
        checks = [
            (not self.use_rope, "use_rope=False (the released v1.1 checkpoints use sin-cos positions)"),
            (self.compress_kv_factor == 1, f"compress_kv_factor=1 (got {self.compress_kv_factor})"),
            (self.patch_size_t == 1, f"patch_size_t=1 (got {self.patch_size_t})"),
            (not self.only_cross_attention and not self.double_self_attention and self.attention_type == "default",
             "self-attention + text cross-attention blocks (attention_type 'default')"),
            (not self.norm_elementwise_affine, "norm_elementwise_affine=False (weightless block norms)"),
            (self.num_vector_embeds is None and self.caption_channels is not None, "continuous latents with text"),
        ]
        for ok, need in checks:
            if not ok:
                raise ValueError(f"LatteT2V supports {need}")

    @property
    def base_sample_size(self) -> int:
        return self.sample_size[0]  # the release's PatchEmbed: base_size and interpolation from the height

    @property
    def temporal_interpolation_scale(self) -> float:
        """The release's interpolation_scale_1d: given, else video_length // 16 ((video_length - 1) // 16 when
        odd, the causal VAE's 1 + 4k frames), at least 1."""
        scale = self.interpolation_scale_1d
        if scale is None:
            length = self.video_length
            scale = (length - 1) // 16 if length % 2 == 1 else length // 16
        return max(scale, 1)


class LatteT2V(LatteTransformer3DModel):
    """(B, 4, F, H, W) latents, (B,) timesteps, (B, S, 4096) T5 states [, (B, S) text mask] -> (B, 8, F, H, W)."""

    config_class = LatteT2VConfig
    class_name = "LatteT2V"

    def __init__(self, config: LatteT2VConfig):
        super().__init__(config)
        self.caption_projection.register_buffer(
            "y_embedding", torch.zeros(NULL_CAPTION_TOKENS, config.caption_channels))
