"""The offline text stack behaves like T5's; configs load from YAML; the CLI runs."""

import pytest
import torch

from videosys import LatteConfig, read_video
from videosys.cli import main as cli_main
from videosys.utils.text import build_tiny_text_encoder, build_tiny_tokenizer, encode_text


def test_tiny_tokenizer_is_t5_like(tmp_path):
    tok = build_tiny_tokenizer(model_max_length=12)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    out = tok(["a red circle moving to the right", "Zebra #42!"], padding="max_length", max_length=12,
              truncation=True)
    first = tok.convert_ids_to_tokens(out.input_ids[0])
    assert first[:8] == ["\u2581a", "\u2581red", "\u2581circle", "\u2581moving", "\u2581to", "\u2581the",
                         "\u2581right", "</s>"]
    assert out.attention_mask[0] == [1] * 8 + [0] * 4 and out.input_ids[0][8:] == [0] * 4
    assert tok.unk_token_id not in out.input_ids[1]  # unknown words fall back to characters
    long = tok("a " * 50, padding="max_length", max_length=12, truncation=True).input_ids
    assert len(long) == 12 and long[-1] == tok.eos_token_id  # truncated, EOS kept
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a red circle").input_ids == tok("a red circle").input_ids


def test_text_encoder_is_deterministic_and_masked():
    tok = build_tiny_tokenizer(16)
    a, b = build_tiny_text_encoder(len(tok), seed=0), build_tiny_text_encoder(len(tok), seed=0)
    states, mask = encode_text(tok, a, ["a red circle", "a dog"], 16, "cpu")
    assert states.shape == (2, 16, 32) and mask.sum(1).tolist() == [4, 3]
    assert torch.equal(states, encode_text(tok, b, ["a red circle", "a dog"], 16, "cpu")[0])


def test_yaml_roundtrip(tmp_path):
    config = LatteConfig(preset="tiny", num_frames=8, guidance_scale=5.0)
    config.to_yaml(tmp_path / "c.yaml")
    again = LatteConfig.from_yaml(str(tmp_path / "c.yaml"))
    assert again == config
    assert LatteConfig().height == 512 and LatteConfig().model_path == "maxin-cn/Latte-1"  # published defaults
    assert LatteConfig(preset="tiny").height == 64 and LatteConfig(preset="tiny", height=128).height == 128


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    rc = cli_main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "a red circle moving to the right",
                   "--output", str(out), "--num-frames", "4", "--steps", "3", "--no-progress"])
    assert rc == 0 and out.exists()
    frames, fps = read_video(str(out))
    assert frames.shape == (4, 64, 64, 3) and fps == 8
    assert cli_main(["generate", "--model", "nope", "--prompt", "x"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert cli_main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "x", "--height", "50",
                     "--output", str(tmp_path / "bad.mp4")]) == 2
    assert not (tmp_path / "bad.mp4").exists()


def test_cli_cache_flag(tmp_path, capsys):
    import json

    rc = cli_main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "a dog", "--cache", "teacache-fast",
                   "--output", str(tmp_path / "c.mp4"), "--steps", "20", "--num-frames", "4", "--no-progress"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["teacache"]["computed_steps"] + stats["teacache"]["reused_steps"] == 20
    assert cli_main(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "a dog", "--cache", "bogus"]) == 2


def test_cli_set_fields_and_durations():
    from videosys.cli import build_parser, make_config

    args = build_parser().parse_args(["generate", "--model", "latte", "--preset", "tiny", "--prompt", "x",
                                      "--set", "mask_feature=false", "--set", "decode_chunk_size=4",
                                      "--set", "teacache_thresh=0.15"])
    config = make_config(args)
    assert config.mask_feature is False and config.decode_chunk_size == 4 and config.teacache_thresh == 0.15
    args = build_parser().parse_args(["generate", "--model", "open-sora", "--preset", "tiny", "--prompt", "x",
                                      "--num-frames", "4s", "--set", "aspect_ratio=9:16", "--set", "resolution=144p"])
    config = make_config(args)
    assert (config.num_frames, config.aspect_ratio, config.resolution) == (102, "9:16", "144p")  # "4s" = 102
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        make_config(build_parser().parse_args(["generate", "--model", "latte", "--prompt", "x", "--set", "oops"]))
