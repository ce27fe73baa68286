"""CascadeV: key layout against the release, grid attention and positions against hand-written maths,
the sampler's windows and tiles, the reconstruction pipeline end to end on the tiny preset, loading,
input errors, and sequence parallel (sp=2 equals one process)."""

import math
import os

import numpy as np
import pytest
import torch

from tests.layout import assert_same_layout, reference_keys
from videosys.models.cascadev import pipeline as cv
from videosys.models.cascadev.encoder import EfficientNetEncoder, EfficientNetEncoderConfig
from videosys.models.cascadev.transformer import (CascadeVTransformer, CascadeVTransformerConfig, SelfAttention,
                                                  position_table, release_state_dict)
from videosys.models.modules.pretrained import CheckpointMismatchError
from videosys.utils.demo_data import make_clip


@pytest.fixture(scope="module")
def tiny():
    return cv.CascadeVPipeline.from_config(cv.CascadeVConfig(preset="tiny", progress_bar=False))


@pytest.fixture(scope="module")
def clip():
    return make_clip("red", "circle", "right", num_frames=12, height=64, width=64, seed=3)


# ---- layout ------------------------------------------------------------------------------------
def test_dit_layout_matches_release():
    with torch.device("meta"):
        model = CascadeVTransformer(CascadeVTransformerConfig())
    assert_same_layout(model, reference_keys("cascadev_dit_state_dict.txt"))


def test_encoder_layout_matches_release():
    with torch.device("meta"):
        model = EfficientNetEncoder(EfficientNetEncoderConfig())
    assert_same_layout(model, reference_keys("cascadev_effnet_state_dict.txt"))
    assert EfficientNetEncoderConfig().downsample == 32


# ---- grid attention and positions ------------------------------------------------------------------
def reference_attention(attn: SelfAttention, x: torch.Tensor, frames: int, h: int, w: int, ts: int, xs: int):
    """The release's grouping written out: group (a, b, c) holds frames a*T/ts.., rows b*h/xs.., columns
    c*w/xs..; plain softmax attention inside each group, tokens put back where they came from."""
    bsz, n, c = x.shape
    heads, d = attn.heads, c // attn.heads
    qkv = attn.qkv(x).view(bsz, n, 3, heads, d)
    out = torch.zeros(bsz, n, heads, d, dtype=torch.float64)
    gt, gh, gw = frames // ts, h // xs, w // xs
    for a in range(ts):
        for b in range(xs):
            for cc in range(xs):
                idx = [f * h * w + r * w + col for f in range(a * gt, (a + 1) * gt)
                       for r in range(b * gh, (b + 1) * gh) for col in range(cc * gw, (cc + 1) * gw)]
                q, k, v = (qkv[:, idx, i].double().transpose(1, 2) for i in range(3))  # (B, heads, g, d)
                weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
                out[:, idx] = (weights @ v).transpose(1, 2)
    return attn.proj(out.reshape(bsz, n, c).float())


@pytest.mark.parametrize("strides", [(1, 2), (2, 1), (2, 2), (4, 1), (1, 1)])
def test_grid_attention_matches_hand_written(strides):
    torch.manual_seed(0)
    frames, h, w = 4, 4, 6
    attn = SelfAttention(24, heads=2, fp32=True)
    x = torch.randn(2, frames * h * w, 24)
    with torch.no_grad():
        ours = attn(x, (frames, h, w), strides, frames * h * w)
        ref = reference_attention(attn, x, frames, h, w, *strides)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_grid_differs_from_full_attention():
    torch.manual_seed(0)
    attn = SelfAttention(24, heads=2, fp32=True)
    x = torch.randn(1, 4 * 4 * 4, 24)
    with torch.no_grad():
        assert not torch.allclose(attn(x, (4, 4, 4), (1, 2), 64), attn(x, (4, 4, 4), None, 64), atol=1e-3)


def test_position_table_is_the_release_formula():
    """[frame sin-cos (C/3) | PixArt 2D sin-cos of (column, row) / pe_interpolation (2C/3)], frame-major."""
    dim, frames, h, w, interp = 48, 3, 4, 4, 2.0

    def sincos(d, pos):  # MAE's get_1d_sincos_pos_embed_from_grid
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(w, dtype=np.float32) / interp, np.arange(h, dtype=np.float32) / interp)
    space = np.concatenate([sincos(32 // 2, gw), sincos(32 // 2, gh)], axis=1)  # (h*w, 32)
    time = sincos(16, np.arange(frames, dtype=np.float32))  # (T, 16)
    ref = np.concatenate([np.repeat(time, h * w, axis=0), np.tile(space, (frames, 1))], axis=1)
    assert np.allclose(position_table(dim, frames, h, w, interp).numpy(), ref, atol=1e-6)


def test_dit_shapes_and_strides_check():
    cfg = CascadeVTransformerConfig(**cv.TINY_TRANSFORMER)
    model = CascadeVTransformer(cfg).eval()
    x = torch.randn(2, cfg.in_channels, cfg.lats_per_vid, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([10.0, 900.0]))
    assert out.shape == (2, cfg.out_channels, cfg.lats_per_vid, 8, 8)
    with pytest.raises(ValueError, match="grid attention"):
        model(torch.randn(1, cfg.in_channels, 6, 8, 8), torch.tensor([1.0]))  # (4, 1) needs frames % 4 == 0


# ---- the sampler's windows and tiles -------------------------------------------------------------
def test_tiles_and_windows_as_the_release():
    assert cv.tile_starts(128, 128, 0.25) == [0]
    assert cv.tile_starts(200, 128, 0.25) == [0, 72]
    assert cv.tile_starts(300, 128, 0.25) == [0, 96, 172]
    assert cv.window_starts(8, 8) == [0]
    assert cv.window_starts(10, 8) == [0, 2]
    assert cv.window_starts(16, 8) == [0, 4, 8]
    assert cv.window_starts(17, 8) == [0, 4, 8, 9]
    assert cv.blend_weights(1, 8) is None
    assert torch.allclose(cv.blend_weights(4, 8), torch.tensor([0, 1 / 3, 2 / 3, 1, 1, 1, 1, 1]))


def test_predict_blends_windows_and_overwrites_tiles(tiny):
    """predict() over 12 frames x (12 x 8) latents against the windows and tiles assembled by hand."""
    torch.manual_seed(1)
    frames, h, w = 12, 12, 8
    lat, cond = torch.randn(frames, 4, h, w), torch.randn(frames, 16, h, w)
    t = torch.tensor([500.0])
    model = tiny.transformer
    with torch.no_grad():
        ours = tiny.predict(lat, cond, t)
        x = torch.cat([lat, cond], 1)

        def run(f0, r0):  # one window x one tile -> (8, 4, 8, 8)
            return model(x[f0:f0 + 8, :, r0:r0 + 8].transpose(0, 1)[None], t)[0, :4].transpose(0, 1)

        first = torch.cat([run(0, 0)[:, :, :4], run(0, 4)], dim=2)  # rows 0..3 from tile 0, 4..11 from tile 4
        second = torch.cat([run(4, 0)[:, :, :4], run(4, 4)], dim=2)
        ref = torch.zeros(frames, 4, h, w)
        ref[0:8] = first
        ramp = torch.tensor([0, 1 / 3, 2 / 3, 1, 1, 1, 1, 1]).view(-1, 1, 1, 1)  # 4 frames overlap
        ref[4:12] = ref[4:12] * (1 - ramp) + second * ramp
    assert torch.allclose(ours, ref, atol=1e-5)


# ---- the pipeline ------------------------------------------------------------------------------------
def test_reconstruct_tiny_end_to_end(tiny, clip):
    out = tiny.reconstruct(clip, num_inference_steps=2)
    assert out.video.shape == (1, 12, 64, 64, 3) and out.video.dtype == torch.uint8
    assert torch.equal(out.input_video[0], torch.from_numpy(clip))  # 64x64 at size 64: no resize, no crop
    assert out.latents.shape == (12, 4, 8, 8) and torch.isfinite(out.latents).all()
    assert out.stats["steps"] == 2 and out.fps == 8
    again = tiny.reconstruct(clip, num_inference_steps=2)
    other = tiny.reconstruct(clip, num_inference_steps=2, seed=1)
    assert torch.equal(again.latents, out.latents) and not torch.equal(other.latents, out.latents)


def test_reconstruct_resizes_and_crops(tiny):
    video = make_clip("blue", "square", "up", num_frames=8, height=80, width=120, seed=0)
    out = tiny.reconstruct(video, num_inference_steps=1)  # short edge 80 -> 64, square crop 64x64
    assert out.video.shape == (1, 8, 64, 64, 3)
    wide = cv.CascadeVPipeline(cv.CascadeVConfig(preset="tiny", square=False, progress_bar=False), tiny.transformer,
                               tiny.encoder, tiny.vae, cv.make_scheduler("euler-a"))
    out = wide.reconstruct(video, num_inference_steps=1, size=0)  # kept: 80x120 -> crop 64x96 (multiples of 32)
    assert out.video.shape == (1, 8, 64, 96, 3)


def test_bad_input_fails_before_compute(tiny, clip, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny.encoder, "forward", lambda *a: calls.append(1))
    with pytest.raises(FileNotFoundError, match="no video file"):
        tiny.reconstruct(str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="at least 8 frames"):
        tiny.reconstruct(clip[:5])
    with pytest.raises(ValueError, match="needs at least 64x64"):
        tiny.reconstruct(make_clip("red", "circle", "up", num_frames=8, height=40, width=40), size=0)
    with pytest.raises(ValueError, match="uint8"):
        tiny.reconstruct(clip.astype(np.float32))
    with pytest.raises(ValueError, match="num_frames=20"):
        tiny.reconstruct(clip, num_frames=20)
    with pytest.raises(ValueError, match="scheduler"):
        cv.CascadeVConfig(preset="tiny", scheduler="dpm")
    with pytest.raises(ValueError, match="height does not apply"):
        cv.CascadeVConfig(preset="tiny", height=64)
    with pytest.raises(ValueError, match=r"TeaCache coefficients\), and none are published for cascadev"):  # tests/test_cascadev_cache.py: the rest
        cv.CascadeVConfig(preset="tiny", cache="teacache")
    assert calls == []


def test_engine_and_cli_write_the_reconstruction(clip, tmp_path):
    from videosys import CascadeVConfig, VideoSysEngine
    from videosys.cli import main
    from videosys.utils.video import read_video, save_video

    src = save_video(clip, str(tmp_path / "clip.mp4"), fps=10)
    with VideoSysEngine(CascadeVConfig(preset="tiny", num_inference_steps=1, progress_bar=False)) as engine:
        out = engine.reconstruct(src)
    assert out.video.shape == (1, 12, 64, 64, 3) and out.fps == 10
    dst = str(tmp_path / "rec.mp4")
    assert main(["reconstruct", "--input", src, "--output", dst, "--preset", "tiny", "--steps", "1",
                 "--no-progress"]) == 0
    frames, fps = read_video(dst)
    assert frames.shape == (12, 64, 64, 3) and fps == 10
    assert main(["reconstruct", "--input", str(tmp_path / "none.mp4"), "--output", dst, "--preset", "tiny"]) == 2


# ---- weights ----------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tiny, clip, tmp_path):
    tiny.save_pretrained(str(tmp_path / "ckpt"))
    loaded = cv.CascadeVPipeline.from_config(cv.CascadeVConfig(model_path=str(tmp_path / "ckpt"), progress_bar=False))
    a = tiny.reconstruct(clip, num_inference_steps=2)
    b = loaded.reconstruct(clip, num_inference_steps=2)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.video, b.video)
    assert loaded.encoder.mapper[1].num_batches_tracked.dtype == torch.long


def test_release_checkpoint_files(tiny, tmp_path):
    """The release's .pth (a torch.save dict: state_dict with PixArt's pos_embed, plus training state) and
    StableWurst's bare safetensors load; a wrong architecture names its mismatches."""
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in tiny.transformer.state_dict().items()}
    torch.save({"state_dict": {**sd, "pos_embed": torch.zeros(1, 4, 96)}, "epoch": 3}, tmp_path / cv.RELEASE_CHECKPOINT)
    assert release_state_dict(str(tmp_path)).keys() == sd.keys()
    model = cv.load_release_transformer(str(tmp_path), torch.float32, tiny.transformer.config)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(CheckpointMismatchError, match="shape mismatches"):
        cv.load_release_transformer(str(tmp_path), torch.float32)  # the full-size architecture
    save_file(tiny.encoder.state_dict(), str(tmp_path / cv.ENCODER_FILE))
    enc = cv.load_encoder(str(tmp_path / cv.ENCODER_FILE), torch.float32, tiny.encoder.config)
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in tiny.encoder.state_dict().items())
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="effnet_encoder"):
        cv.load_encoder(str(tmp_path / "empty"), torch.float32)


# ---- sequence parallel -------------------------------------------------------------------------------
@pytest.mark.slow
def test_sequence_parallel_equals_single(tiny, clip):
    """sp=2 through the engine (a spawned gloo worker): the DiT's tokens sharded, Ulysses around attention."""
    from videosys import CascadeVConfig, VideoSysEngine

    ref = tiny.reconstruct(clip, num_inference_steps=2)
    with VideoSysEngine(CascadeVConfig(preset="tiny", num_gpus=2, progress_bar=False)) as engine:
        assert engine.pipeline.transformer.parallel.sp_size == 2
        out = engine.reconstruct(clip, num_inference_steps=2)
    assert (out.latents - ref.latents).abs().max() <= 1e-4 * max(1.0, float(ref.latents.abs().max()))
    assert (out.video.float() - ref.video.float()).abs().max() <= 1.0
    assert not torch.equal(out.latents, tiny.reconstruct(clip, num_inference_steps=2, seed=5).latents)


# ---- evaluation script ----------------------------------------------------------------------------------
def test_eval_script_scores_demo_clips(tmp_path):
    import json

    from tests.eval_helpers import load_script

    script = load_script("eval_cascadev")
    out = tmp_path / "eval.json"
    assert script.main(["--demo-clips", "2", "--demo-frames", "8", "--clips", str(tmp_path / "clips"), "--preset",
                        "tiny", "--steps", "1", "--output", str(out), "--save-dir", str(tmp_path / "rec")]) == 0
    report = json.loads(out.read_text())
    assert report["clips"] == 2 and len(report["per_clip"]) == 2
    psnr = report["metrics"]["psnr"]
    assert 0 < psnr < 100 and 0 < report["metrics"]["ssim"] < 1
    assert abs(psnr - np.mean([c["psnr"] for c in report["per_clip"].values()])) < 1e-6  # same length: plain mean
    assert sorted(os.listdir(tmp_path / "rec")) == sorted(report["per_clip"])
    assert script.main(["--clips", str(tmp_path / "rec" / "none"), "--preset", "tiny"]) == 2


def test_training_cost_script_runs_and_extrapolates(tmp_path):
    import json

    from tests.eval_helpers import load_script

    script = load_script("bench_cascadev_train")
    out = tmp_path / "cost.json"
    threads = str(torch.get_num_threads())  # the script sets the process's thread count: keep the suite's
    assert script.main(["--steps", "1", "--clips", "1", "--vae-steps", "10", "--dit-steps", "20", "--threads", threads,
                        "--output", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["vae_s_per_step"] > 0 and r["dit_s_per_step"] > 0
    assert abs(r["estimated_hours"] - (10 * r["vae_s_per_step"] + 20 * r["dit_s_per_step"]) / 3600) < 1e-9
    assert script.main(["--steps", "0"]) == 2
