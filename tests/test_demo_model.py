"""The shipped demo model, `LatteConfig(preset="demo")`: a standard checkpoint folder that draws what
its prompt asks for, and the cache frontier (`videosys bench`) on it."""

import json
import os

import numpy as np
import pytest
import torch
from eval_helpers import load_script  # tests/eval_helpers.py

from videosys import LatteConfig, VideoSysEngine
from videosys.eval import demo as demo_tracker
from videosys.models.latte import pipeline as latte_pipeline

MIN_SKIP_ACCURACY = 0.75  # demo-skip: 22/24 at seed 0, 66/72 over seeds 0-2 (docs/caches/skipcache.md)



@pytest.fixture(scope="module")
def engine():
    with VideoSysEngine(LatteConfig(preset="demo", progress_bar=False)) as engine:
        yield engine


@pytest.mark.parametrize("name", ["DEMO_PATH", "DEMO_SKIP_PATH"])
def test_demo_checkpoint_is_a_small_standard_folder(name):
    folder = getattr(latte_pipeline, name)
    index = json.load(open(os.path.join(folder, "model_index.json")))
    assert index["_class_name"] == "LattePipeline"
    for part in ("transformer", "vae", "text_encoder"):
        assert os.path.exists(os.path.join(folder, part, "diffusion_pytorch_model.safetensors")
                              if part != "text_encoder" else os.path.join(folder, part, "model.safetensors"))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
    assert size < 10 * 2**20, f"the demo checkpoint grew to {size / 2**20:.1f} MB"


def test_demo_preset_is_the_shipped_folder(engine):
    from_folder = latte_pipeline.LattePipeline.from_config(
        LatteConfig(model_path=latte_pipeline.DEMO_PATH, preset="tiny", progress_bar=False))
    ours = engine.pipeline.transformer.state_dict()
    for name, value in from_folder.transformer.state_dict().items():
        assert torch.equal(ours[name], value), name
    assert engine.pipeline.vae.config.scaling_factor == from_folder.vae.config.scaling_factor != 0.18215


@pytest.mark.parametrize("preset,name", [("demo", "DEMO_PATH"), ("demo-skip", "DEMO_SKIP_PATH")])
def test_missing_demo_checkpoint_says_how_to_get_it(monkeypatch, tmp_path, preset, name):
    monkeypatch.setattr(latte_pipeline, name, str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=f"the {preset} checkpoint .*train_demo.py"):
        latte_pipeline.LattePipeline.from_config(LatteConfig(preset=preset))


def test_demo_draws_the_readme_prompt(engine):
    video = engine.generate("a red circle moving to the right", seed=0).video[0].numpy()
    assert video.shape == (16, 64, 64, 3)
    assert demo_tracker.classify(video) == ("red", "right")


@pytest.mark.slow
def test_demo_follows_colour_and_direction(engine):
    prompts = demo_tracker.prompt_set()  # 24 prompts: every colour x direction
    rows = [demo_tracker.row(p, p, engine.generate(p, seed=0).video[0].numpy()) for p in prompts]
    accuracy = demo_tracker.score(rows)
    assert accuracy["both"] >= 0.75, accuracy  # measured 20/24 (docs/demo.md); chance is 1/24
    # the text matters: the same noise with another prompt gives another video
    a, b = (engine.generate(p, seed=1).video[0].numpy().astype(np.int16) for p in prompts[:2])
    assert np.abs(a - b).mean() > 5


@pytest.mark.slow
def test_bench_cache_frontier_on_the_demo(tmp_path):
    from videosys.eval import bench

    out = tmp_path / "frontier.json"
    assert bench.main(["--variants", "none", "teacache-0.5", "pab-246", "--prompts", "2", "--steps", "30",
                       "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["none", "teacache-0.5", "pab-246"] and report["preset"] == "demo"
    assert results["none"]["speedup"] == 1.0 and "psnr" not in results["none"]
    tea = results["teacache-0.5"]["caches"]["teacache"]
    assert tea["computed_steps"] + tea["reused_steps"] == 30 and tea["reused_steps"] > 0
    for variant in ("teacache-0.5", "pab-246"):
        row = results[variant]
        assert 10 < row["psnr"] < 60 and 0 < row["ssim"] < 1  # lossy on a trained model, but close
        assert 0 <= row["accuracy"] <= 1 and row["accuracy_detail"]["n"] == 2
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def skip_engine():
    with VideoSysEngine(LatteConfig(preset="demo-skip", progress_bar=False)) as engine:
        yield engine


def test_demo_skip_is_the_demo_grown_to_four_units_with_skip_branches(skip_engine):
    transformer = skip_engine.pipeline.transformer
    assert transformer.config.skip_connections and transformer.config.num_layers == 4
    demo = LatteConfig(preset="demo")
    assert skip_engine.config.prompt_vocabulary() == demo.prompt_vocabulary() is not None
    base = latte_pipeline.LattePipeline.from_config(LatteConfig(preset="demo", progress_bar=False))
    for name, value in base.vae.state_dict().items():  # the demo's frozen VAE (--vae-from)
        assert torch.equal(skip_engine.pipeline.vae.state_dict()[name], value), name


@pytest.mark.slow
def test_demo_skip_follows_colour_and_direction(skip_engine):
    prompts = demo_tracker.prompt_set()
    rows = [demo_tracker.row(p, p, skip_engine.generate(p, seed=0).video[0].numpy()) for p in prompts]
    accuracy = demo_tracker.score(rows)
    assert accuracy["both"] >= MIN_SKIP_ACCURACY, accuracy


def test_skip_cache_on_demo_skip_runs_two_of_four_units_on_cached_steps(skip_engine):
    prompt = "a red circle moving to the right"
    full = skip_engine.generate(prompt, seed=0).video[0].numpy()
    skip_engine.set_cache("skipcache")
    try:
        out = skip_engine.generate(prompt, seed=0)
    finally:
        skip_engine.set_cache(None)
    stats = out.stats["skipcache"]
    assert stats["reused_steps"] > 0 and stats["units_run"] < 4 * 50, stats
    video = out.video[0].numpy()
    assert demo_tracker.classify(video) == demo_tracker.classify(full)
    assert 0 < np.abs(video.astype(np.int16) - full.astype(np.int16)).mean() < 3  # close, not identical


def test_magcache_by_name_on_the_demo_models_and_the_command_elsewhere(engine):
    """The demo models ship their calibrated MagCache ratios (latte's cache_settings.py), so `cache="magcache"`
    runs by name there (and joins bench's default sweep); a model without ratios is refused when its config is
    built, naming the one command that records them for it."""
    for preset in ("demo", "demo-skip"):
        config = LatteConfig(preset=preset, cache="magcache")
        assert config.cache_models() == (f"latte-{preset}", "latte")
        ratios = config.cache_configs()[0].ratios
        assert len(ratios) == 50 and ratios[0] == 1.0 and all(0.8 < r < 1.2 for r in ratios)
    engine.set_cache("magcache")
    try:
        out = engine.generate("a red circle moving to the right", seed=0)
    finally:
        engine.set_cache(None)
    assert out.stats["magcache"]["reused_steps"] > 0
    with pytest.raises(ValueError, match=r"python scripts/calibrate_teacache.py --method magcache --model latte "
                                         r"--preset tiny"):
        LatteConfig(preset="tiny", cache="magcache")
    with pytest.raises(ValueError, match=r"--model latte --model-path /no/such/latte"):
        LatteConfig(model_path="/no/such/latte", cache="magcache")
