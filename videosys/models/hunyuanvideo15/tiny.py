"""The tiny presets' components: the release's classes at small widths, random weights, built offline.

- transformer: our HunyuanVideo15Transformer3DModel, 2 heads of 16, 2 blocks, latent channels 4 (in 2 * 4 + 1);
- VAE: diffusers' AutoencoderKLHunyuanVideo15 with its 16x spatial / 4x temporal compression, narrow blocks;
- LLM: transformers' Qwen2.5-VL text model (Qwen2_5_VLTextModel, the class the release's diffusers layout loads),
  3 layers of width 32, with a byte-level Qwen2 tokenizer built here (one token per byte, no merges: no file) and
  a chat template in Qwen's format (<|im_start|>role\\ncontent<|im_end|>\\n ...);
- ByT5: ByT5Tokenizer (bytes: needs no vocabulary file) and a 2-layer T5 encoder;
- SigLIP (I2V): a 2-layer SiglipVisionModel on 28 x 28 images (4 tokens) and its SiglipImageProcessor.
"""

import torch

LATENT, TEXT_DIM, GLYPH_DIM, IMAGE_DIM = 4, 32, 16, 16
TARGET_SIZE = 64  # the tiny transformer's resolution bucket (the releases': 640 / 960)
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def transformer_config(task_type: str):
    from videosys.models.hunyuanvideo15.transformer import HunyuanVideo15TransformerConfig

    return HunyuanVideo15TransformerConfig(
        in_channels=2 * LATENT + 1, out_channels=LATENT, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, text_embed_dim=TEXT_DIM, text_embed_2_dim=GLYPH_DIM, image_embed_dim=IMAGE_DIM,
        rope_axes_dim=(4, 6, 6), target_size=TARGET_SIZE, task_type=task_type)


def seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def qwen_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", padding_side="right")  # Qwen's
    tokenizer.chat_template = QWEN_TEMPLATE
    return tokenizer


def qwen_text_model(tokenizer, seed: int = 0):
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    config = Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=2 * TEXT_DIM, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    return seeded(seed, lambda: Qwen2_5_VLTextModel(config)).eval()


def byt5(seed: int = 1):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    tokenizer = ByT5Tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=GLYPH_DIM, d_kv=8, d_ff=2 * GLYPH_DIM, num_layers=2,
                      num_heads=2, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                      is_encoder_decoder=False, use_cache=False)
    return tokenizer, seeded(seed, lambda: T5EncoderModel(config)).eval()


def siglip(seed: int = 2):
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(hidden_size=IMAGE_DIM, intermediate_size=2 * IMAGE_DIM, num_hidden_layers=2,
                                num_attention_heads=2, image_size=28, patch_size=14)
    encoder = seeded(seed, lambda: SiglipVisionModel(config)).eval()
    return SiglipImageProcessor(size={"height": 28, "width": 28}), encoder


def vae(seed: int = 3):
    from diffusers import AutoencoderKLHunyuanVideo15

    return seeded(seed, lambda: AutoencoderKLHunyuanVideo15(
        latent_channels=LATENT, block_out_channels=(8, 8, 16, 16, 16), layers_per_block=1)).eval()


def transformer(task_type: str, seed: int = 4):
    from videosys.models.hunyuanvideo15.transformer import HunyuanVideo15Transformer3DModel

    return seeded(seed, lambda: HunyuanVideo15Transformer3DModel(transformer_config(task_type))).eval()
