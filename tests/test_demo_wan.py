"""The demo Wan (scripts/train_demo.py --family wan, `WanConfig(preset="demo")`): what the trainer writes is a
diffusers WanPipeline folder, and diffusers' WanPipeline on it, uncached, gives our video."""

import json

import numpy as np
import pytest
import torch
from eval_helpers import load_script  # tests/eval_helpers.py
from test_wan import diffusers_transformer  # diffusers' WanTransformer3DModel from a saved transformer/

from videosys.models.wan import pipeline as wan_pipeline
from videosys.models.wan.pipeline import WanConfig, WanPipeline

# a seconds-long run of the whole trainer (both stages, the save) at toy sizes
TOY = ["--family", "wan", "--vae-steps", "2", "--vae-more", "2:5:1", "2:9:1", "--steps", "12", "--num-frames", "5", "--height", "32", "--width", "32",
       "--latent-pool", "16", "--val-size", "2", "--log-every", "100", "--vae-base-dim", "4", "--num-layers", "2",
       "--width-heads", "2"]
PROMPT = "a red circle moving to the right"


@pytest.fixture(scope="module")
def toy_wan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-wan") / "toy"
    assert load_script("train_demo").main(["--output", str(folder), *TOY]) == 0
    return folder


def test_trainer_writes_a_wan_folder_with_measured_latent_statistics(toy_wan):
    index = json.load(open(toy_wan / "model_index.json"))
    assert index["_class_name"] == "WanPipeline" and index["vae"] == ["diffusers", "AutoencoderKLWan"]
    report = json.load(open(toy_wan / "train_demo.json"))
    vae = json.load(open(toy_wan / "vae" / "config.json"))
    # the measured statistics, not AutoencoderKLWan's defaults (Wan2.1's VAE), are what the pipelines decode with
    assert vae["latents_mean"] == report["latents_mean"] and vae["latents_std"] == report["latents_std"] != [1.0] * 16
    assert json.load(open(toy_wan / "scheduler" / "scheduler_config.json"))["flow_shift"] == 3.0
    assert report["transformer"]["val_loss_after"] < report["transformer"]["val_loss_before"]


def test_diffusers_wan_pipeline_gives_our_video(toy_wan):
    """diffusers.WanPipeline.from_pretrained(folder) reads every part from the folder; only the transformer is
    handed in, because diffusers loads its fp32-kept modules through accelerate, which this environment lacks (with
    accelerate installed the plain call loads the same files)."""
    import diffusers

    kwargs = dict(num_frames=5, height=32, width=32, num_inference_steps=4, guidance_scale=5.0)
    ref = diffusers.WanPipeline.from_pretrained(str(toy_wan),
                                                transformer=diffusers_transformer(str(toy_wan / "transformer")))
    ref.set_progress_bar_config(disable=True)
    frames = ref(PROMPT, negative_prompt="", generator=torch.Generator().manual_seed(3), output_type="np",
                 **kwargs).frames[0]
    theirs = (frames * 255).round().astype(np.int16)
    ours = WanPipeline.from_config(WanConfig(model_path=str(toy_wan), preset="demo", progress_bar=False, **kwargs))
    video = ours.generate(PROMPT, seed=3).video[0].numpy().astype(np.int16)  # the demo's negative prompt: ""
    assert video.shape == theirs.shape == (5, 32, 32, 3)
    assert np.abs(video - theirs).max() <= 1
    assert video.std() > 0  # a video, not a constant frame


def test_shipped_demo_is_a_diffusers_folder_giving_our_video():
    """The shipped videosys/assets/demo-wan through diffusers' WanPipeline (peers.load_wan: from_pretrained, the
    transformer handed in without accelerate), uncached, at the demo's size: our video within one uint8 level."""
    from videosys.eval.peers import load_wan

    config = WanConfig(preset="demo", progress_bar=False, num_inference_steps=6)
    ref = load_wan(config.model_path)
    ref.set_progress_bar_config(disable=True)
    frames = ref(PROMPT, negative_prompt="", num_frames=17, height=64, width=64, num_inference_steps=6,
                 guidance_scale=config.guidance_scale, generator=torch.Generator().manual_seed(1),
                 output_type="np").frames[0]
    video = WanPipeline.from_config(config).generate(PROMPT, seed=1).video[0].numpy().astype(np.int16)
    assert video.shape == (17, 64, 64, 3) and video.std() > 5
    assert np.abs(video - (frames * 255).round().astype(np.int16)).max() <= 1


def test_demo_preset_is_the_shipped_folder_or_says_how_to_train_it(monkeypatch, tmp_path):
    monkeypatch.setattr(wan_pipeline, "DEMO_PATH", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="the demo checkpoint .*train_demo.py --family wan"):
        WanConfig(preset="demo")
    monkeypatch.setattr(wan_pipeline, "DEMO_PATH", str(tmp_path))
    config = WanConfig(preset="demo")
    assert config.model_path == str(tmp_path) and config.kind == "t2v-1.3B"
    assert (config.num_frames, config.height, config.width, config.flow_shift) == (17, 64, 64, 3.0)
    assert config.default_negative_prompt() == ""  # the uncond prompt the demo was trained with
    assert WanConfig(preset="tiny").default_negative_prompt() != ""  # the releases' keep theirs


def test_bench_races_diffusers_hooks_and_cache_dit_on_the_folder(toy_wan, tmp_path):
    """`videosys bench --model wan --peers`: diffusers' WanPipeline with its hooks and a second one with cache-dit's
    DBCache, each against its own uncached run; counted work is the same measure for all (FLOPs of the transformer's
    forwards); a variant the peer itself refuses is reported, not fatal; MagCache runs its own calibration first."""
    pytest.importorskip("cache_dit")
    from videosys.eval import bench

    out = tmp_path / "wan.json"
    assert bench.main(["--model", "wan", "--preset", "demo", "--model-path", str(toy_wan), "--num-frames", "5",
                       "--height", "32", "--width", "32", "--steps", "6", "--prompts", "1", "--repeats", "1",
                       "--variants", "none", "--peers", "taylorseer-lite-2", "magcache-0.5", "dbcache-F1B0-0.5-ts",
                       "dbcache-F8B0-0.08", "--output", str(out)]) == 0
    results = json.load(open(out))["results"]
    assert {"diffusers:none", "cache-dit:none", "diffusers:magcache-0.5"} <= set(results)
    assert "Fn_compute_blocks 8" in results["cache-dit:dbcache-F8B0-0.08"]["error"]  # the toy has 2 blocks
    # work is a fraction of each framework's own uncached FLOPs: cache-dit patches the same diffusers model; ours
    # computes the text's cross-attention keys and values once per generation, theirs on every call
    assert results["diffusers:none"]["flops"] == results["cache-dit:none"]["flops"] > results["none"]["flops"]
    lite = results["diffusers:taylorseer-lite-2"]
    assert lite["framework"] == "diffusers" and 0.3 < lite["work"] < 0.9 and lite["psnr"] > 5
    dbcache = results["cache-dit:dbcache-F1B0-0.5-ts"]
    assert dbcache["framework"] == "cache-dit" and dbcache["method"] == "cache-dit:dbcache-F1B0-ts"
    assert dbcache["work"] <= 1.0 and results["diffusers:magcache-0.5"]["work"] <= 1.0
