"""The demo model's groundwork: procedural clips, the colour-centroid evaluator, the training loop."""

import json

import numpy as np
import pytest

from eval_helpers import load_script  # tests/eval_helpers.py
from videosys.eval import demo as eval_demo
from videosys.utils import demo_data
from videosys.utils.text import build_tiny_tokenizer


def test_caption_and_vocabulary():
    assert demo_data.caption("red", "circle", "right") == "a red circle moving to the right"
    assert demo_data.caption("blue", "square", "up") == "a blue square moving up"
    assert demo_data.parse_caption("a green triangle moving to the left") == ("green", "triangle", "left")
    with pytest.raises(ValueError, match="colour"):
        demo_data.caption("beige", "circle", "up")
    # every caption word is a whole token of the offline tokenizer (no character fallback)
    tokenizer = build_tiny_tokenizer(120)
    for combo in demo_data.combinations():
        text = demo_data.caption(*combo)
        assert len(tokenizer(text).input_ids) == len(text.split()) + 1  # + </s>


def test_clip_moves_one_colour_in_its_direction():
    clip = demo_data.make_clip("red", "square", "right", num_frames=8, height=64, width=64, seed=3)
    assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
    red = np.all(clip == demo_data.COLOURS["red"], axis=-1)  # (T, H, W)
    area = red.sum(axis=(1, 2))
    assert (area == area[0]).all() and 200 < area[0] < 300  # a 16 px square, never clipped by the border
    xs = np.array([np.nonzero(m)[1].mean() for m in red])
    ys = np.array([np.nonzero(m)[0].mean() for m in red])
    assert np.allclose(np.diff(xs), 32 / 7, atol=0.6)  # half the width over the clip, at constant speed
    assert np.ptp(ys) < 1e-6
    assert len(np.unique(clip[0].reshape(-1, 3), axis=0)) == 2  # the object and a plain background


@pytest.mark.parametrize("direction", list(demo_data.DIRECTIONS))
def test_clip_stays_inside_the_frame(direction):
    for seed in range(20):
        clip = demo_data.make_clip("blue", "circle", direction, num_frames=16, height=32, width=48, seed=seed)
        mask = np.all(clip == demo_data.COLOURS["blue"], axis=-1)  # (T, H, W)
        area = mask.sum(axis=(1, 2))
        assert area.min() > 0.9 * area.max() > 0  # the whole disc in every frame (up to pixel sampling)
        border = mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any()
        assert not border


def test_dataset_is_seeded_and_balanced():
    data = demo_data.DemoClips(num_frames=4, height=32, width=32, seed=7)
    n = len(data)
    assert n == 6 * 3 * 4
    clips, captions = data.batch(0, n)
    assert sorted(captions) == sorted(demo_data.caption(*c) for c in demo_data.combinations())  # one pass each
    again, _ = demo_data.DemoClips(num_frames=4, height=32, width=32, seed=7).batch(0, n)
    other, _ = demo_data.DemoClips(num_frames=4, height=32, width=32, seed=8).batch(0, n)
    assert np.array_equal(clips, again)
    assert not np.array_equal(clips, other)
    assert not np.array_equal(data.batch(1, n)[0], clips)  # the next pass: new positions and backgrounds


# ---- videosys/eval/demo.py (scripts/eval_demo.py): the colour-centroid tracker ------------------


def test_tracker_follows_the_centroid():
    clip = demo_data.make_clip("yellow", "circle", "down", num_frames=6, height=64, width=64, seed=1)
    centroids = eval_demo.track(clip, demo_data.COLOURS["yellow"])
    mask = np.all(clip == demo_data.COLOURS["yellow"], axis=-1)
    expected_y = [np.nonzero(m)[0].mean() + 0.5 for m in mask]
    assert np.allclose(centroids[:, 1], expected_y, atol=1e-4)
    assert np.isnan(eval_demo.track(clip, demo_data.COLOURS["red"])).all()  # no red object: no centroid
    # classify() labels pixels once for all colours; its mask must be the one track() builds
    label = eval_demo.labels(clip)
    yellow = list(demo_data.COLOURS).index("yellow")
    assert np.allclose(eval_demo.centroids_of(label == yellow), centroids, equal_nan=True)


def test_tracker_classifies_every_procedural_clip_and_reversal_flips():
    data = demo_data.DemoClips(num_frames=16, height=64, width=64, seed=11)
    flip = {"left": "right", "right": "left", "up": "down", "down": "up"}
    for i in range(len(data)):  # every combination once
        clip, text, (colour, _, direction) = data.item(i)
        assert eval_demo.classify(clip) == (colour, direction), text
        assert eval_demo.classify(clip[::-1]) == (colour, flip[direction]), text
    still = np.repeat(data.item(0)[0][:1], 16, axis=0)
    assert eval_demo.classify(still)[1] is None  # a still object has no direction
    blank = np.full((16, 64, 64, 3), 128, dtype=np.uint8)
    assert eval_demo.classify(blank) == (None, None)


def test_tracker_survives_noise_and_h264(tmp_path):
    """Generated videos are blurry and noisy; the tracker must still read a clip through mp4 and noise."""
    from videosys.utils.video import save_video

    eval_demo_cli = load_script("eval_demo")
    rng = np.random.default_rng(0)
    data = demo_data.DemoClips(num_frames=16, height=64, width=64, seed=2)
    for i in range(4):
        clip, text, _ = data.item(i)
        noisy = np.clip(clip + rng.normal(0, 25, clip.shape), 0, 255).astype(np.uint8)
        save_video(noisy, str(tmp_path / f"{text}-{i}.mp4"))
    save_video(data.item(5)[0][::-1], str(tmp_path / f"{data.item(5)[1]}-5.mp4"))  # played backwards: wrong
    out = tmp_path / "out" / "eval.json"
    assert eval_demo_cli.main(["--videos", str(tmp_path), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"] == {"n": 5, "colour": 1.0, "direction": 0.8, "both": 0.8}
    wrong = [r for r in result["videos"] if r["expected"]["direction"] != r["predicted"]["direction"]]
    assert [r["name"] for r in wrong] == [f"{data.item(5)[1]}-5.mp4"]


def test_prompt_set_covers_colours_and_directions():
    prompts = eval_demo.prompt_set()
    parsed = [demo_data.parse_caption(p) for p in prompts]
    assert len(prompts) == 24 and len(set(prompts)) == 24
    assert {(c, d) for c, _, d in parsed} == {(c, d) for c in demo_data.COLOURS for d in demo_data.DIRECTIONS}
    assert {s for _, s, _ in parsed} == set(demo_data.SHAPES)


# ---- scripts/train_demo.py: the training loop at toy scale -------------------------------------

TOY = ["--vae-steps", "25", "--steps", "25", "--num-frames", "4", "--height", "32", "--width", "32",
       "--vae-batch", "8", "--batch-size", "4", "--warmup", "5", "--val-size", "8", "--log-every", "100"]


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    train_demo = load_script("train_demo")
    folder = tmp_path_factory.mktemp("demo") / "ckpt"
    assert train_demo.main(["--output", str(folder), *TOY]) == 0
    return folder, json.loads((folder / "train_demo.json").read_text())


def test_vae_loss_weights_the_object():
    train_demo = load_script("train_demo")
    clip = demo_data.make_clip("green", "triangle", "up", num_frames=3, height=32, width=32, seed=4)
    weights = train_demo.object_weights(train_demo.to_pixels(clip[None]), 10.0)  # (T, 1, H, W)
    on_object = np.all(clip == demo_data.COLOURS["green"], axis=-1)
    assert np.array_equal(weights[:, 0].numpy(), np.where(on_object, 11.0, 1.0))


@pytest.mark.slow
def test_training_lowers_the_held_out_losses(toy_checkpoint):
    _, report = toy_checkpoint
    vae, transformer = report["vae"], report["transformer"]
    assert len(vae["losses"]) == 25 and len(transformer["losses"]) == 25
    # a toy VAE run learns slowly at first (the object-weighted loss; 0.45 -> 0.37 here); the full run's 300
    # steps reach 0.02 (see the docstring of scripts/train_demo.py)
    assert vae["val_mse_after"] < 0.9 * vae["val_mse_before"]
    assert transformer["val_loss_after"] < 0.9 * transformer["val_loss_before"]
    assert report["scaling_factor"] > 0
    assert vae["tracker_accuracy"]["n"] == 8  # the tracker scored the VAE's reconstructions of the held-out clips


def test_saved_checkpoint_loads_and_generates(toy_checkpoint):
    import torch

    from videosys import LatteConfig, LattePipeline

    folder, report = toy_checkpoint
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    pipe = LattePipeline.from_config(LatteConfig(model_path=str(folder), preset="tiny", progress_bar=False))
    assert pipe.vae.config.scaling_factor == pytest.approx(report["scaling_factor"])
    out = pipe.generate("a red circle moving to the right", seed=0, num_frames=4, height=32, width=32,
                        num_inference_steps=4)
    assert out.video.shape == (1, 4, 32, 32, 3) and out.video.dtype == torch.uint8
    # the trained weights are what was saved, not the preset's random ones
    random = LattePipeline.from_config(LatteConfig(preset="tiny", progress_bar=False))
    assert not torch.equal(pipe.transformer.proj_out.weight, random.transformer.proj_out.weight)


@pytest.mark.slow
def test_training_is_deterministic(toy_checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file

    train_demo = load_script("train_demo")
    folder, report = toy_checkpoint
    args = train_demo.parse_args(["--output", str(tmp_path), *TOY])
    args.steps = 3  # the same VAE run, then the first transformer steps
    _, again = train_demo.train(args, log=lambda _: None)
    assert again["vae"]["losses"] == report["vae"]["losses"]
    assert again["scaling_factor"] == report["scaling_factor"]
    assert again["transformer"]["losses"] == report["transformer"]["losses"][:3]
    args.seed = 1
    rng_state = torch.random.get_rng_state()
    _, other = train_demo.train(args, log=lambda _: None)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # training leaves the caller's RNG alone
    assert not torch.are_deterministic_algorithms_enabled()
    assert other["vae"]["losses"] != report["vae"]["losses"]
    saved = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_eval_generates_with_an_engine_and_scores(toy_checkpoint, tmp_path):
    eval_demo = load_script("eval_demo")
    folder, _ = toy_checkpoint
    out = tmp_path / "eval.json"
    assert eval_demo.main(["--model-path", str(folder), "--limit", "2", "--seeds", "1", "--num-inference-steps", "2",
                           "--cache", "teacache-fast", "--save-dir", str(tmp_path / "videos"),
                           "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"]["n"] == 2
    assert [r["prompt"] for r in result["videos"]] == eval_demo.prompt_set()[:2]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == sorted(r["name"] for r in result["videos"])


def test_stage_two_reuses_a_trained_vae(toy_checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file

    train_demo = load_script("train_demo")
    folder, report = toy_checkpoint
    args = train_demo.parse_args(["--output", str(tmp_path), *TOY, "--vae-from", str(folder), "--steps", "2",
                                  "--num-layers", "3", "--latent-pool", "8"])
    pipeline, again = train_demo.train(args, log=lambda _: None)
    assert again["vae"] == {"from": str(folder)}  # stage 1 skipped
    assert again["scaling_factor"] == pytest.approx(report["scaling_factor"])
    saved = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(pipeline.vae.state_dict()[k], v) for k, v in saved.items())
    assert len(pipeline.transformer.transformer_blocks) == 3 and len(again["transformer"]["losses"]) == 2
    pipeline.save_pretrained(str(tmp_path / "out"))  # the VAE config a single run writes (no local path in it)
    written = json.loads((tmp_path / "out" / "vae" / "config.json").read_text())
    source = json.loads((folder / "vae" / "config.json").read_text())
    assert "_name_or_path" not in written
    assert {k: v for k, v in written.items() if k != "_diffusers_version"} == \
        {k: v for k, v in source.items() if k != "_diffusers_version"}


def test_eval_generates_with_a_shipped_demo_preset(tmp_path):
    eval_demo = load_script("eval_demo")
    out = tmp_path / "eval.json"
    assert eval_demo.main(["--demo", "demo-skip", "--limit", "1", "--num-inference-steps", "2",
                           "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["args"]["preset"] == "demo-skip" and result["accuracy"]["n"] == 1
