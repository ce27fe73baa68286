"""The text stack: T5 encoder + tokenizer, official or tiny and offline.

The tiny tokenizer is a real T5 tokenizer (unigram model, `</s>` appended, `<pad>` = 0,
`</s>` = 1, `<unk>` = 2, padding, truncation and attention masks as T5's) whose vocabulary
is built here from a fixed word list, so it needs no file and no network.
"""

import os
import string
import warnings

import torch

from videosys.utils.caller import user_stacklevel

# Words of the captions users try first (and of the demo clips); anything else falls back to
# characters, so every ASCII prompt tokenizes without <unk>.
_WORDS = """
a an the of and in on at to with from by is are its it this that up down left right top bottom
moving moves move slowly quickly fast slow across toward towards around over under into through
red green blue yellow orange purple pink white black gray grey brown cyan magenta
circle square triangle ball box cube star ring dot line shape object
dog cat bird fish horse car boat train plane person man woman child people
sky sea ocean beach river lake mountain forest tree flower grass city street road snow rain sun moon
water fire cloud clouds light night day sunset sunrise background plain colorful
running walking flying swimming driving dancing playing sitting standing jumping falling
video camera view close shot scene beautiful small large big little
""".split()
_PIECE_SCORE, _CHAR_SCORE = -5.0, -12.0  # whole words are preferred over their characters


def tiny_vocab() -> list[tuple[str, float]]:
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    seen = {p for p, _ in vocab}
    for word in _WORDS:
        for piece in ("\u2581" + word, word):
            if piece not in seen:
                vocab.append((piece, _PIECE_SCORE))
                seen.add(piece)
    for ch in string.ascii_letters + string.digits + string.punctuation:
        for piece in (ch, "\u2581" + ch):
            if piece not in seen:
                vocab.append((piece, _CHAR_SCORE))
                seen.add(piece)
    return vocab


def build_tiny_tokenizer(model_max_length: int):
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=tiny_vocab(), extra_ids=0, model_max_length=model_max_length)


def build_tiny_text_encoder(vocab_size: int, d_model: int = 32, seed: int = 0):
    """A 2-layer T5 encoder with T5 v1.1's structure (gated GELU, relative attention)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                      dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5EncoderModel(config).eval()


def load_text_stack(path: str, dtype: torch.dtype, device):
    """The official text encoder and tokenizer from `path`'s text_encoder/ and tokenizer/ folders."""
    from transformers import AutoTokenizer, T5EncoderModel

    from videosys.models.modules.pretrained import load_pretrained
    from videosys.utils.hub import resolve_dir

    tokenizer = load_pretrained(AutoTokenizer, resolve_dir(path, "tokenizer"))
    encoder = load_pretrained(T5EncoderModel, resolve_dir(path, "text_encoder"), dtype=dtype).to(device).eval()
    return tokenizer, encoder


def warn_if_cut(tokenizer, prompts: list[str], max_length: int, name: str = "prompt") -> None:
    """Warn (once per call) when the longest of `prompts` is more tokens than the text encoder takes: the
    encoders truncate silently, so a long prompt's end would otherwise vanish without a word. Counts only;
    the encoded tokens are unchanged."""
    ids = tokenizer(prompts, add_special_tokens=True, truncation=False, verbose=False).input_ids
    warn_if_longer([len(i) for i in ids], max_length, name)


def warn_if_longer(lengths: list[int], max_length: int, name: str = "prompt") -> None:
    """warn_if_cut's warning from token counts a family computed itself (a chat template's, say)."""
    longest = max(lengths)
    if longest > max_length:
        warnings.warn(f"{name} is {longest} tokens, more than the text encoder's limit of {max_length}: the last "
                      f"{longest - max_length} tokens are cut and do not affect the video", stacklevel=user_stacklevel())


@torch.no_grad()
def encode_text(tokenizer, encoder, prompts: list[str], max_length: int, device,
                name: str = "prompt") -> tuple[torch.Tensor, torch.Tensor]:
    """prompts -> (B, max_length, C) hidden states and the (B, max_length) attention mask; a warning names
    `name` when a prompt is cut to max_length."""
    warn_if_cut(tokenizer, prompts, max_length, name)
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    return encoder(ids, attention_mask=mask).last_hidden_state, mask


def encode_text_cut(tokenizer, encoder, prompts: list[str], negative_prompt: str, max_length: int, device,
                    do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text states laid out [uncond; cond] and a (B, S) mask (None when nothing is masked), as the PixArt-alpha
    pipelines that Latte-1 and Open-Sora-Plan v1.1 release with `mask_feature=True`: the tokens are cut to the
    longest prompt's length; the negative prompt's states are cut to the same length and attended to in full
    (with several prompts each uncond row to its own prompt's length, the length it has alone).

    With one prompt this is the releases' computation exactly. With several, the releases keep all max_length
    tokens and zero the padded ones' states (still attending to them); we mask them instead, so a batched
    prompt gives the video it gives alone.
    """
    cond, mask = encode_text(tokenizer, encoder, prompts, max_length, device)
    keep = int(mask.sum(dim=1).max())  # one host sync per generation, not per step
    cond, mask = cond[:, :keep], mask[:, :keep]
    if do_cfg:
        uncond, _ = encode_text(tokenizer, encoder, [negative_prompt] * len(prompts), max_length, device,
                                  "negative_prompt")
        cond, mask = torch.cat([uncond[:, :keep], cond]), torch.cat([mask, mask])
    return cond, None if bool(mask.all()) else mask


def save_text_stack(tokenizer, encoder, folder: str) -> None:
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    encoder.save_pretrained(os.path.join(folder, "text_encoder"))
