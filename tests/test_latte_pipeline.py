"""The Latte pipeline end to end: against diffusers' LattePipeline, save/load, files, seeds, errors."""

import json

import numpy as np
import pytest
import torch

from videosys import LatteConfig, LattePipeline, VideoSysEngine, read_video
from videosys.models.modules.pretrained import CheckpointMismatchError

PROMPT = "a red circle moving to the right"


def small(pipe, **kw):
    """A short run of the tiny model (8 frames, 10 steps) to keep the suite fast."""
    return pipe.generate(PROMPT, **{"num_frames": 8, "num_inference_steps": 10, **kw})


def test_matches_diffusers_latte_pipeline(tiny_latte, tmp_path):
    from diffusers import DDIMScheduler
    from diffusers import LattePipeline as DiffusersLattePipeline
    from diffusers import LatteTransformer3DModel as DiffusersLatte

    tiny_latte.transformer.save_pretrained(tmp_path / "transformer")
    ref = DiffusersLattePipeline(
        tokenizer=tiny_latte.tokenizer, text_encoder=tiny_latte.text_encoder, vae=tiny_latte.vae,
        transformer=DiffusersLatte.from_pretrained(tmp_path / "transformer"),
        scheduler=DDIMScheduler.from_config(tiny_latte.scheduler.config))
    ref.set_progress_bar_config(disable=True)
    for prompt in (PROMPT, "a blue square moving up on a plain white background"):
        expected = ref(prompt, negative_prompt="", num_inference_steps=10, guidance_scale=7.5, height=64, width=64,
                       video_length=16, generator=torch.Generator().manual_seed(3), output_type="pt",
                       clean_caption=False).frames  # (B, F, C, H, W) in [0, 1]
        ours = tiny_latte.generate(prompt, seed=3, num_frames=16, num_inference_steps=10).video
        expected = (expected.permute(0, 1, 3, 4, 2) * 255).float()
        assert ours.shape == expected.shape == (1, 16, 64, 64, 3)
        assert (ours.float() - expected).abs().max() <= 1.0  # at most one rounding step of uint8


def test_seeds(tiny_latte):
    a, b, c = small(tiny_latte, seed=1).video, small(tiny_latte, seed=1).video, small(tiny_latte, seed=2).video
    assert torch.equal(a, b)
    assert (a.float() - c.float()).abs().mean() > 1.0


def test_batch_of_prompts_masks_padding(tiny_latte):
    """In a batch, a short prompt is padded to the longest one; its padding must be masked out, so
    sample 0 equals the short prompt run alone (same noise: the batch's first slice). No CFG here:
    with CFG the published recipe cuts the negative prompt to the batch's longest prompt."""
    prompts = ["a green triangle moving up", PROMPT]
    kw = dict(seed=5, num_frames=4, num_inference_steps=5, guidance_scale=1.0)
    batch = tiny_latte.generate(prompts, **kw).video
    alone = tiny_latte.generate(prompts[0], **kw).video
    assert batch.shape == (2, 4, 64, 64, 3)
    assert (batch[0].float() - alone[0].float()).abs().max() <= 1.0
    assert (batch[1].float() - alone[0].float()).abs().mean() > 1.0


def test_save_and_load_whole_pipeline(tiny_latte, tmp_path):
    tiny_latte.save_pretrained(str(tmp_path))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "LatteTransformer3DModel"]
    loaded = LattePipeline.from_config(LatteConfig(model_path=str(tmp_path), preset="tiny", progress_bar=False))
    assert torch.equal(small(loaded, seed=4).video, small(tiny_latte, seed=4).video)


def test_save_pretrained_writes_whole_or_not_at_all(tiny_latte, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "stale.bin").write_bytes(b"old")  # a component is replaced whole ...
    (folder / "notes.txt").write_text("mine")  # ... and what is not a component stays
    tiny_latte.save_pretrained(str(folder))
    assert (folder / "notes.txt").read_text() == "mine" and not (folder / "transformer" / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging folder left behind
    LattePipeline.from_config(LatteConfig(model_path=str(folder), preset="tiny", progress_bar=False))

    def disk_full(path):
        raise OSError("disk full")

    monkeypatch.setattr(tiny_latte.vae, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="disk full"):
        tiny_latte.save_pretrained(str(tmp_path / "new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half-written "new"


def test_end_to_end_mp4(tmp_path):
    engine = VideoSysEngine(LatteConfig(preset="tiny", progress_bar=False))
    out = engine.generate(PROMPT, seed=0, num_inference_steps=5)
    assert out.video.shape == (1, 16, 64, 64, 3) and out.video.dtype == torch.uint8
    path = engine.save_video(out.video[0], str(tmp_path / "clip.mp4"))
    frames, fps = read_video(path)
    assert frames.shape == (16, 64, 64, 3)
    assert fps == 8
    # H.264 is lossy; the decoded file must still be close to what was generated
    assert np.abs(frames.astype(float) - out.video[0].numpy().astype(float)).mean() < 12
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary file left behind


def test_mismatched_checkpoint_names_keys(tiny_latte, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_latte.save_pretrained(str(tmp_path))
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["extra.weight"] = state.pop("proj_out.weight")
    save_file(state, weights)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): proj_out.weight") as err:
        LattePipeline.from_config(LatteConfig(model_path=str(tmp_path), preset="tiny"))
    assert "unexpected keys (1): extra.weight" in str(err.value)


@pytest.mark.parametrize("kwargs,name", [
    (dict(height=60), "height"), (dict(width=72), "width"), (dict(num_frames=0), "num_frames"),
    (dict(num_frames=-3), "num_frames"), (dict(prompt=""), "prompt"), (dict(prompt=["ok", " "]), "prompt"),
    (dict(num_inference_steps=0), "num_inference_steps"), (dict(guidance_scale=-1.0), "guidance_scale"),
])
def test_bad_generation_input(tiny_latte, kwargs, name):
    kwargs = {"prompt": PROMPT, **kwargs}
    with pytest.raises(ValueError, match=name):
        tiny_latte.generate(**kwargs)


def test_bad_config():
    with pytest.raises(ValueError, match="preset"):
        LatteConfig(preset="huge")
    with pytest.raises(ValueError, match="dtype"):
        LatteConfig(dtype="int8")
    with pytest.raises(ValueError, match="num_gpus"):
        LatteConfig(num_gpus=0)
    with pytest.raises(ValueError, match="unknown LatteConfig fields: heigth"):
        LatteConfig.from_dict({"heigth": 64})
    with pytest.raises(FileNotFoundError, match="tiny"):
        LattePipeline.from_config(LatteConfig(model_path="no-such-org/no-such-model"))
