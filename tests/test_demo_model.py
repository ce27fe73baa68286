"""The shipped demo model, `LatteConfig(preset="demo")`: a standard checkpoint folder that draws what
its prompt asks for, and the cache frontier (scripts/bench_cache.py) on it."""

import json
import os

import numpy as np
import pytest
import torch
from eval_helpers import load_script  # tests/eval_helpers.py

from videosys import LatteConfig, VideoSysEngine
from videosys.eval import demo as demo_tracker
from videosys.models.latte import pipeline as latte_pipeline



@pytest.fixture(scope="module")
def engine():
    with VideoSysEngine(LatteConfig(preset="demo", progress_bar=False)) as engine:
        yield engine


def test_demo_checkpoint_is_a_small_standard_folder():
    folder = latte_pipeline.DEMO_PATH
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


def test_missing_demo_checkpoint_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(latte_pipeline, "DEMO_PATH", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="train_demo.py"):
        latte_pipeline.LattePipeline.from_config(LatteConfig(preset="demo"))


def test_demo_draws_the_readme_prompt(engine):
    video = engine.generate("a red circle moving to the right", seed=0).video[0].numpy()
    assert video.shape == (16, 64, 64, 3)
    assert demo_tracker.classify(video) == ("red", "right")


def test_demo_follows_colour_and_direction(engine):
    prompts = demo_tracker.prompt_set()  # 24 prompts: every colour x direction
    rows = [demo_tracker.row(p, p, engine.generate(p, seed=0).video[0].numpy()) for p in prompts]
    accuracy = demo_tracker.score(rows)
    assert accuracy["both"] >= 0.75, accuracy  # measured 20/24 (README); chance is 1/24
    # the text matters: the same noise with another prompt gives another video
    a, b = (engine.generate(p, seed=1).video[0].numpy().astype(np.int16) for p in prompts[:2])
    assert np.abs(a - b).mean() > 5


def test_bench_cache_frontier_on_the_demo(tmp_path):
    bench = load_script("bench_cache")
    out = tmp_path / "frontier.json"
    assert bench.main(["--variants", "none", "teacache-0.5", "pab-246", "--prompts", "2", "--steps", "30",
                       "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["none", "teacache-0.5", "pab-246"] and report["preset"] == "demo"
    assert results["none"]["speedup"] == 1.0 and "psnr" not in results["none"]
    tea = results["teacache-0.5"]["teacache"]
    assert tea["computed_steps"] + tea["reused_steps"] == 30 and tea["reused_steps"] > 0
    for variant in ("teacache-0.5", "pab-246"):
        row = results[variant]
        assert 10 < row["psnr"] < 60 and 0 < row["ssim"] < 1  # lossy on a trained model, but close
        assert 0 <= row["accuracy"] <= 1 and row["accuracy_detail"]["n"] == 2
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
