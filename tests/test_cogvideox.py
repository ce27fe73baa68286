"""CogVideoX: our transformer and pipeline against diffusers on the same weights; loading, files, errors."""

import dataclasses
import json
import types

import numpy as np
import pytest
import torch

from videosys import CogVideoXConfig, CogVideoXPipeline, VideoSysEngine, read_video
from videosys.cli import main as cli_main
from videosys.models.cogvideox.transformer import CogVideoXTransformer3DModel, CogVideoXTransformerConfig
from videosys.models.modules.pretrained import CheckpointMismatchError

PROMPT = "a red circle moving to the right"
TEXT_DIM, TEXT_LEN = 20, 7
CFG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=24,
           text_embed_dim=TEXT_DIM, num_layers=2, sample_height=8, sample_width=12, max_text_seq_length=TEXT_LEN)


# ---- the transformer ------------------------------------------------------------------------------

def pair(rotary: bool, seed: int = 0):
    """diffusers' model and ours, sharing one random state dict (every weight drawn, none left at zero)."""
    from diffusers import CogVideoXTransformer3DModel as DiffusersCogVideoX

    config = CogVideoXTransformerConfig(**CFG, use_rotary_positional_embeddings=rotary)
    ref = DiffusersCogVideoX(**dataclasses.asdict(config)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ours = CogVideoXTransformer3DModel(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours, g


def diffusers_rotary(ref, frames: int, h: int, w: int):
    """The RoPE tables diffusers' CogVideoXPipeline hands its transformer for (frames, h, w) latents."""
    from diffusers import CogVideoXPipeline as DiffusersPipeline

    fake = types.SimpleNamespace(vae_scale_factor_spatial=8, transformer=ref)
    return DiffusersPipeline._prepare_rotary_positional_embeddings(fake, h * 8, w * 8, frames, "cpu")


@pytest.mark.parametrize("rotary", [False, True], ids=["sincos-2b", "rope-5b"])
@pytest.mark.parametrize("batch,frames,h,w", [(1, 1, 8, 12), (2, 3, 8, 12), (3, 2, 6, 16)])
def test_transformer_matches_diffusers(rotary, batch, frames, h, w):
    ref, ours, g = pair(rotary)
    x = torch.randn(batch, frames, 4, h, w, generator=g)
    text = torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=g)
    rope = diffusers_rotary(ref, frames, h, w) if rotary else None
    for t in (999, 500, 1):
        timestep = torch.full((batch,), t)
        with torch.no_grad():
            expected = ref(x, text, timestep, image_rotary_emb=rope, return_dict=False)[0]
            got = ours(x, text, timestep)
        assert got.shape == expected.shape == (batch, frames, 4, h, w)
        assert expected.abs().max() > 0.1  # a real signal, not zeros on both sides
        assert (got - expected).abs().max() <= 1e-4


def test_position_tables_are_built_once_per_grid():
    for rotary in (False, True):
        _, ours, g = pair(rotary)
        x, text = torch.randn(1, 2, 4, 8, 12, generator=g), torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g)
        grid = (2, 4, 6)  # latent frames, rows, columns after the 2x2 patches
        table = (lambda: ours.rotary_table(TEXT_LEN, *grid, x.device)) if rotary else (
            lambda: ours.sincos_table(*grid, x.device, x.dtype))
        with torch.no_grad():
            first = ours(x, text, torch.tensor([900]))
            built = table()
            second = ours(x, text, torch.tensor([900]))
        assert torch.equal(first, second)
        assert table() is built  # reused, not rebuilt
        if rotary:
            cos, sin = built
            assert cos.shape == sin.shape == (TEXT_LEN + 2 * 4 * 6, 16)
            assert torch.equal(cos[:TEXT_LEN], torch.ones(TEXT_LEN, 16)) and not sin[:TEXT_LEN].any()  # text unrotated


def test_loads_diffusers_folder_and_diffusers_reads_ours(tmp_path):
    from diffusers import CogVideoXTransformer3DModel as DiffusersCogVideoX

    ref, ours, g = pair(rotary=True)
    ref.save_pretrained(tmp_path / "theirs")  # the official layout: diffusers' own config.json and keys
    loaded = CogVideoXTransformer3DModel.from_pretrained(str(tmp_path / "theirs"))
    assert loaded.config == ours.config
    ours.save_pretrained(tmp_path / "ours")
    theirs = DiffusersCogVideoX.from_pretrained(str(tmp_path / "ours")).eval()
    x, text, t = torch.randn(1, 2, 4, 8, 12, generator=g), torch.randn(1, TEXT_LEN, TEXT_DIM, generator=g), \
        torch.tensor([10])
    rope = diffusers_rotary(ref, 2, 8, 12)
    with torch.no_grad():
        a, b = ours(x, text, t), loaded(x, text, t)
        c = theirs(x, text, t, image_rotary_emb=rope, return_dict=False)[0]
    assert (a - b).abs().max() <= 1e-5
    assert (a - c).abs().max() <= 1e-4


# config.json of THUDM/CogVideoX-2b's transformer/ (5b: 48 heads, 42 layers, RoPE); the rest are the defaults
FULL_2B = dict(num_attention_heads=30, num_layers=30, attention_head_dim=64, time_embed_dim=512, text_embed_dim=4096,
               use_rotary_positional_embeddings=False)
FULL_5B = dict(FULL_2B, num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)


@pytest.mark.parametrize("config", [FULL_2B, FULL_5B], ids=["2b", "5b"])
def test_full_size_keys_and_shapes_match_diffusers(config):
    """The released checkpoints load unchanged: at full size (built on the meta device, no memory) every
    parameter name and shape equals diffusers' model's."""
    from diffusers import CogVideoXTransformer3DModel as DiffusersCogVideoX

    with torch.device("meta"):
        ref = DiffusersCogVideoX(**config)
        ours = CogVideoXTransformer3DModel(CogVideoXTransformerConfig(**config))
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mine == theirs
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_unsupported_variants_are_refused():
    with pytest.raises(ValueError, match="patch_size_t"):
        CogVideoXTransformerConfig(patch_size_t=2)  # CogVideoX 1.5
    with pytest.raises(ValueError, match="use_learned_positional_embeddings"):
        CogVideoXTransformerConfig(use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True)
    with pytest.raises(ValueError, match="divisible by 16"):
        CogVideoXTransformerConfig(attention_head_dim=24, use_rotary_positional_embeddings=True)


# ---- the pipeline ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return CogVideoXPipeline.from_config(CogVideoXConfig(preset="tiny", progress_bar=False))


def diffusers_pipeline(pipe, tmp_path):
    """diffusers' CogVideoXPipeline over the same components (its own transformer class, our weights)."""
    from diffusers import CogVideoXPipeline as DiffusersPipeline
    from diffusers import CogVideoXTransformer3DModel as DiffusersCogVideoX

    pipe.transformer.save_pretrained(tmp_path / "transformer")
    ref = DiffusersPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                            transformer=DiffusersCogVideoX.from_pretrained(tmp_path / "transformer"),
                            scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config))
    ref.set_progress_bar_config(disable=True)
    return ref


@pytest.mark.parametrize("preset,scheduler,dynamic_cfg,prompts", [
    ("tiny", "ddim", False, [PROMPT, "a blue square moving up on a plain white background"]),
    ("tiny", "dpm", False, [PROMPT]),
    ("tiny-5b", "dpm", True, ["a dog running on the beach"]),
])
def test_matches_diffusers_pipeline(preset, scheduler, dynamic_cfg, prompts, tmp_path):
    pipe = CogVideoXPipeline.from_config(CogVideoXConfig(preset=preset, scheduler=scheduler,
                                                         use_dynamic_cfg=dynamic_cfg, progress_bar=False))
    names = {"ddim": "CogVideoXDDIMScheduler", "dpm": "CogVideoXDPMScheduler"}
    assert type(pipe.scheduler).__name__ == names[scheduler]
    assert pipe.transformer.config.use_rotary_positional_embeddings == (preset == "tiny-5b")
    ref = diffusers_pipeline(pipe, tmp_path)
    # the noise diffusers draws from the same CPU generator is our fp32 CPU noise
    expected_noise = ref.prepare_latents(len(prompts), 4, 9, 64, 96, torch.float32, "cpu",
                                         torch.Generator().manual_seed(7))
    noise = torch.randn(len(prompts), 3, 4, 8, 12, generator=torch.Generator().manual_seed(7))  # ours, (B, F, C, h, w)
    assert torch.equal(expected_noise, noise)

    expected = ref(prompts, negative_prompt=[""] * len(prompts), num_frames=9, height=64, width=96,
                   num_inference_steps=5, guidance_scale=6.0, use_dynamic_cfg=dynamic_cfg,
                   generator=torch.Generator().manual_seed(7), output_type="pt").frames  # (B, F, C, H, W) in [0, 1]
    ours = pipe.generate(prompts, seed=7, num_frames=9, num_inference_steps=5).video
    expected = (expected.permute(0, 1, 3, 4, 2) * 255).float()
    assert ours.shape == expected.shape == (len(prompts), 9, 64, 96, 3)
    assert ours.float().std() > 5  # a picture, not a flat frame
    assert (ours.float() - expected).abs().max() <= 1.0  # at most one rounding step of uint8


def test_no_host_sync_in_the_loop(monkeypatch):
    """The loop never reads a tensor back with .item() (diffusers' dynamic CFG does, every step)."""
    pipe = CogVideoXPipeline.from_config(CogVideoXConfig(preset="tiny-5b", scheduler="dpm", use_dynamic_cfg=True,
                                                         progress_bar=False))
    calls = []
    real_item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or real_item(self))
    out = pipe.generate(PROMPT, seed=0, num_frames=1, num_inference_steps=4)
    assert out.stats["steps"] == 4 and calls == []


def test_seeds(tiny):
    kw = dict(num_frames=1, num_inference_steps=4)
    a, b, c = (tiny.generate(PROMPT, seed=s, **kw).video for s in (1, 1, 2))
    assert a.shape == (1, 1, 64, 96, 3)
    assert torch.equal(a, b)
    assert (a.float() - c.float()).abs().mean() > 1.0


def test_save_and_load_whole_pipeline(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline"
    assert index["transformer"] == ["diffusers", "CogVideoXTransformer3DModel"]
    assert index["scheduler"] == ["diffusers", "CogVideoXDDIMScheduler"]
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "CogVideoXTransformer3DModel" and config["max_text_seq_length"] == 226
    loaded = CogVideoXPipeline.from_config(CogVideoXConfig(model_path=str(tmp_path), preset="tiny", progress_bar=False))
    kw = dict(seed=4, num_frames=1, num_inference_steps=4)
    assert torch.equal(loaded.generate(PROMPT, **kw).video, tiny.generate(PROMPT, **kw).video)
    # the same folder with the DPM scheduler: built from the saved DDIM config
    dpm = CogVideoXPipeline.from_config(CogVideoXConfig(model_path=str(tmp_path), scheduler="dpm"))
    assert type(dpm.scheduler).__name__ == "CogVideoXDPMScheduler" and dpm.scheduler.config.snr_shift_scale == 3.0


def test_mismatched_checkpoint_names_keys(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny.transformer.save_pretrained(tmp_path / "transformer")
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["transformer_blocks.0.attn1.norm_q.scale"] = state.pop("transformer_blocks.0.attn1.norm_q.weight")
    save_file(state, weights)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): transformer_blocks.0.attn1.norm_q.weight"):
        CogVideoXTransformer3DModel.from_pretrained(str(tmp_path), "transformer")


def test_end_to_end_mp4(tmp_path):
    engine = VideoSysEngine(CogVideoXConfig(preset="tiny", progress_bar=False))
    out = engine.generate(PROMPT, seed=0, num_inference_steps=4)
    assert out.video.shape == (1, 9, 64, 96, 3) and out.video.dtype == torch.uint8
    path = engine.save_video(out.video[0], str(tmp_path / "clip.mp4"))
    frames, fps = read_video(path)
    assert frames.shape == (9, 64, 96, 3)
    assert fps == 8
    assert np.abs(frames.astype(float) - out.video[0].numpy().astype(float)).mean() < 12  # H.264 is lossy


def test_cli_generate(tmp_path):
    out = tmp_path / "cli.mp4"
    rc = cli_main(["generate", "--model", "cogvideox", "--preset", "tiny-5b", "--prompt", PROMPT,
                   "--output", str(out), "--num-frames", "9", "--steps", "3", "--no-progress"])
    assert rc == 0
    frames, fps = read_video(str(out))
    assert frames.shape == (9, 64, 96, 3) and fps == 8
    assert cli_main(["generate", "--model", "cogvideox", "--preset", "tiny", "--prompt", "x", "--num-frames", "8",
                     "--output", str(tmp_path / "bad.mp4")]) == 2
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_frames=8), "num_frames"), (dict(num_frames=13), "num_frames"), (dict(num_frames=0), "num_frames"),
    (dict(height=56), "height"), (dict(width=100), "width"), (dict(prompt=""), "prompt"),
    (dict(prompt=["ok", " "]), "prompt"), (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(guidance_scale=-1.0), "guidance_scale"), (dict(negative_prompt=3), "negative_prompt"),
])
def test_bad_generation_input(tiny, kwargs, name):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=name):
        tiny.generate(**kwargs)


def test_auto_dtype_is_the_releases(monkeypatch):
    """dtype="auto": fp32 on CPU; on CUDA fp16 for 2b (THUDM's and VideoSys's choice; the 2b TeaCache
    polynomial was fitted so) and bf16 for 5b. An explicit dtype always wins."""
    from videosys import LatteConfig

    def on_cuda(config):
        monkeypatch.setattr(config, "torch_device", lambda: torch.device("cuda"))
        return config

    assert CogVideoXConfig(device="cpu").torch_dtype() == torch.float32
    assert on_cuda(CogVideoXConfig()).torch_dtype() == torch.float16  # THUDM/CogVideoX-2b
    assert on_cuda(CogVideoXConfig(preset="tiny")).torch_dtype() == torch.float16
    assert on_cuda(CogVideoXConfig(model_path="THUDM/CogVideoX-5b")).torch_dtype() == torch.bfloat16
    assert on_cuda(CogVideoXConfig(preset="tiny-5b")).torch_dtype() == torch.bfloat16
    assert on_cuda(CogVideoXConfig(dtype="fp32")).torch_dtype() == torch.float32
    assert on_cuda(CogVideoXConfig(dtype="bf16")).torch_dtype() == torch.bfloat16
    assert on_cuda(LatteConfig()).torch_dtype() == torch.bfloat16  # the other families keep bf16


def test_config_defaults_and_errors():
    config = CogVideoXConfig()
    assert (config.model_path, config.num_frames, config.height, config.width) == ("THUDM/CogVideoX-2b", 49, 480, 720)
    assert (config.num_inference_steps, config.guidance_scale, config.fps, config.max_text_length) == (50, 6.0, 8, 226)
    assert CogVideoXConfig(preset="tiny").model_path is None
    assert CogVideoXConfig(preset="tiny", height=128).height == 128
    with pytest.raises(ValueError, match="scheduler"):
        CogVideoXConfig(scheduler="euler")
    with pytest.raises(ValueError, match="preset"):
        CogVideoXConfig(preset="huge")
