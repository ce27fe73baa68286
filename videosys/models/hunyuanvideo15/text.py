"""HunyuanVideo-1.5's two text encoders and its image encoder, as the release feeds them.

- LLM text: Qwen2.5-VL-7B's language model over a chat (the release's system message, then the prompt as the
  user's turn, then the assistant's turn opened), padded to `max_length` tokens after the template's prefix; the
  states are the third-to-last hidden layer (two skipped) with the template's prefix cut off, and the mask with it.
- ByT5 glyph text: the prompt's quoted strings ("..." or “...”), deduplicated, joined as `Text "x". Text "y". `
  and encoded by a T5 encoder over ByT5's byte tokens; a prompt without quotes gives zero states and a zero mask.
- SigLIP (I2V): the conditioning image's last hidden state.

Sources: diffusers' HunyuanVideo15Pipeline (`_get_mllm_prompt_embeds`, `_get_byt5_prompt_embeds`, `system_message`,
`tokenizer_max_length` 1000, `tokenizer_2_max_length` 256) and HunyuanVideo15ImageToVideoPipeline
(`_get_image_embeds`), which follow the release's hyvideo/pipelines/hunyuan_video_pipeline.py.
"""

import re

import torch

from videosys.utils.text import warn_if_cut, warn_if_longer

# the release's system message, word for word (its whitespace is part of the tokens the model saw)
SYSTEM_MESSAGE = "You are a helpful assistant. Describe the video by detailing the following aspects: \
        1. The main content and theme of the video. \
        2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects. \
        3. Actions, events, behaviors temporal relationships, physical movement changes of the objects. \
        4. background environment, light, style and atmosphere. \
        5. camera angles, movements, and transitions used in the video."
SKIPPED_LAYERS = 2  # the states are hidden_states[-(2 + 1)]
MAX_TEXT_LENGTH = 1000  # LLM tokens after the template's prefix
MAX_GLYPH_LENGTH = 256  # ByT5 tokens
RELEASE_CROP_START = 108  # the template's prefix in Qwen2.5-VL's tokens (diffusers' prompt_template_encode_start_idx)


def chats(prompts: list[str]) -> list[list[dict]]:
    """The release's chat per prompt (an empty prompt becomes one space, as the release's)."""
    return [[{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": p or " "}] for p in prompts]


def template_prefix_length(tokenizer) -> int:
    """Tokens before the user's text in the chat template: where two prompts' token ids first differ.

    For Qwen2.5-VL's tokenizer this should be the release's 108 (diffusers hardcodes it; not checked here, the
    tokenizer is not on this machine: the pipeline warns when a large tokenizer gives another count); a tiny
    tokenizer has its own."""
    a, b = (tokenizer.apply_chat_template(chats([p])[0], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"] for p in ("a", "b"))
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


@torch.no_grad()
def encode_llm(tokenizer, encoder, prompts: list[str], max_length: int, crop_start: int,
               device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max_length, C) hidden states and the (B, max_length) mask of the prompts' chats; a warning says when
    a chat is cut to max_length tokens after the template's prefix (utils/text.warn_if_longer)."""
    full = tokenizer.apply_chat_template(chats(prompts), add_generation_prompt=True, tokenize=True, return_dict=True)
    warn_if_longer([len(ids) - crop_start for ids in full["input_ids"]], max_length)
    tokens = tokenizer.apply_chat_template(chats(prompts), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, padding="max_length", max_length=max_length + crop_start,
                                           truncation=True, return_tensors="pt")
    ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    states = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    return states[-(SKIPPED_LAYERS + 1)][:, crop_start:], mask[:, crop_start:]


def glyph_text(prompt: str) -> str | None:
    """The quoted strings of a prompt as the release writes them for ByT5, or None without any."""
    found = [a or b for a, b in re.findall(r"\"(.*?)\"|“(.*?)”", prompt)]
    if len(found) > 1:
        found = list(dict.fromkeys(found))  # deduplicated, first occurrences kept in order
    return ". ".join(f'Text "{text}"' for text in found) + ". " if found else None


@torch.no_grad()
def encode_glyphs(tokenizer, encoder, prompts: list[str], max_length: int,
                  device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max_length, C) ByT5 states and the (B, max_length) mask; zeros for a prompt without quotes."""
    states, masks = [], []
    for prompt in prompts:
        text = glyph_text(prompt)
        if text is None:
            states.append(torch.zeros(1, max_length, encoder.config.d_model, device=device, dtype=encoder.dtype))
            masks.append(torch.zeros(1, max_length, dtype=torch.int64, device=device))
            continue
        warn_if_cut(tokenizer, [text], max_length, "the prompt's quoted text")
        tokens = tokenizer(text, padding="max_length", max_length=max_length, truncation=True,
                           add_special_tokens=True, return_tensors="pt").to(device)
        states.append(encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask.float())[0])
        masks.append(tokens.attention_mask)
    return torch.cat(states), torch.cat(masks)


@torch.no_grad()
def encode_image(feature_extractor, encoder, image, device) -> torch.Tensor:
    """A PIL image -> SigLIP's (1, tokens, C) last hidden state (the processor resizes it to the encoder's size)."""
    pixels = feature_extractor.preprocess(images=image, do_resize=True, return_tensors="pt", do_convert_rgb=True)
    dtype = next(encoder.parameters()).dtype
    return encoder(pixel_values=pixels["pixel_values"].to(device=device, dtype=dtype)).last_hidden_state
