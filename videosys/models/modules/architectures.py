"""The published architectures of the shared parts (text encoders, image VAEs), built without weights: what the
memory planner (core/planner.py) runs at full size on the meta device. Values from the releases' config.json."""


def t5_xxl_encoder():
    """T5 v1.1 XXL's encoder (DeepFloyd/t5-v1_1-xxl: Latte, Open-Sora, CogVideoX, Open-Sora-Plan v1.1)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                   relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                                   is_encoder_decoder=False, use_cache=False)).eval()


def umt5_xxl_encoder():
    """umt5-xxl's encoder (Wan's text encoder: google/umt5-xxl, vocab 256384)."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                       num_heads=64, relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                                       is_encoder_decoder=False, use_cache=False)).eval()


def mt5_xxl_encoder():
    """mT5-XXL's encoder (google/mt5-xxl: Open-Sora-Plan v1.2's text encoder, vocab 250112)."""
    from transformers import MT5Config, MT5EncoderModel

    return MT5EncoderModel(MT5Config(vocab_size=250112, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                     relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                                     is_encoder_decoder=False, use_cache=False)).eval()


def sd_vae():
    """Stable Diffusion's image VAE (stabilityai/sd-vae-ft-ema: Latte-1's vae/)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256).eval()


def clip_vit_l_text_encoder():
    """CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14: Stable Diffusion 1.x's text_encoder/, LaVie's)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu")).eval()
