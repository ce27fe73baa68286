"""scripts/train_demo.py's Skip-DiT recipe at toy scale: the demo model grown to 4 units with skip branches,
stage 1 trains only the branches (the rest frozen), stage 2 everything."""

import os

import pytest
import torch

from eval_helpers import load_script  # tests/eval_helpers.py
from videosys.models.latte.pipeline import DEMO_PATH
from videosys.models.latte.transformer import LatteTransformer3DModel

TOY = ["--vae-from", DEMO_PATH, "--init-from", DEMO_PATH, "--skip-connections", "--num-layers", "4",
       "--num-frames", "4", "--height", "32", "--width", "32", "--batch-size", "2", "--latent-pool", "8",
       "--val-size", "4", "--warmup", "1", "--log-every", "100"]


def is_skip(name: str) -> bool:
    return name.startswith(("skip_norms.", "skip_linears."))


def test_grown_state_copies_units_to_the_same_relative_depth():
    train_demo = load_script("train_demo")
    demo = LatteTransformer3DModel.from_pretrained(DEMO_PATH, "transformer").state_dict()
    grown = train_demo.grown_state(demo, 4, 2)
    for i, src in enumerate((0, 0, 1, 1)):
        for head in ("transformer_blocks", "temporal_transformer_blocks"):
            key = f"{head}.{i}.attn1.to_q.weight"
            assert torch.equal(grown[key], demo[f"{head}.{src}.attn1.to_q.weight"])
    assert torch.equal(grown["proj_out.weight"], demo["proj_out.weight"])


def test_stage_one_trains_only_the_skip_branches_then_stage_two_everything(tmp_path):
    train_demo = load_script("train_demo")
    demo = LatteTransformer3DModel.from_pretrained(DEMO_PATH, "transformer").state_dict()
    grown = train_demo.grown_state(demo, 4, 2)

    args = train_demo.parse_args(["--output", str(tmp_path / "a"), *TOY, "--skip-stage1-steps", "3", "--steps", "0"])
    init = train_demo.build_pipeline(args.seed, args.prediction_type, 4, True).transformer.state_dict()
    pipe, report = train_demo.train(args, log=lambda _: None)
    after = pipe.transformer.state_dict()
    assert pipe.transformer.config.skip_connections
    assert report["transformer"]["skip_stage"]["steps"] == 3 and len(report["transformer"]["skip_stage"]["losses"]) == 3
    for name, value in after.items():
        if is_skip(name):
            assert not torch.equal(value, init[name]), name  # trained from the seeded init
        else:
            assert torch.equal(value, grown[name]), name  # frozen at the demo's weights
    assert all(p.requires_grad for p in pipe.transformer.parameters())  # unfrozen again for the caller

    args = train_demo.parse_args(["--output", str(tmp_path / "b"), *TOY, "--skip-stage1-steps", "3", "--steps", "2"])
    pipe, report = train_demo.train(args, log=lambda _: None)
    both = pipe.transformer.state_dict()
    assert len(report["transformer"]["losses"]) == 2
    assert report["transformer"]["skip_stage"]["losses"] == pytest.approx(
        train_demo.train(train_demo.parse_args(["--output", str(tmp_path / "c"), *TOY, "--skip-stage1-steps", "3",
                                                "--steps", "0"]), log=lambda _: None)[1]["transformer"]
        ["skip_stage"]["losses"])  # deterministic
    assert not torch.equal(both["transformer_blocks.1.attn1.to_q.weight"], grown["transformer_blocks.1.attn1.to_q.weight"])


def test_the_written_checkpoint_runs_skip_cache(tmp_path):
    train_demo = load_script("train_demo")
    folder = tmp_path / "ckpt"
    assert train_demo.main(["--output", str(folder), *TOY, "--skip-stage1-steps", "2", "--steps", "1"]) == 0
    from videosys import LatteConfig, LattePipeline

    pipe = LattePipeline.from_config(LatteConfig(model_path=str(folder), preset="tiny", progress_bar=False,
                                                 cache="skipcache"))
    assert pipe.transformer.config.skip_connections and pipe.transformer.config.num_layers == 4
    out = pipe.generate("a red circle moving to the right", num_frames=4, height=32, width=32,
                        num_inference_steps=10)
    assert out.stats["skipcache"]["reused_steps"] > 0
    assert os.path.exists(folder / "train_demo.json")


def test_stage_one_needs_skip_branches(capsys):
    train_demo = load_script("train_demo")
    with pytest.raises(SystemExit):
        train_demo.parse_args(["--output", "x", "--skip-stage1-steps", "3"])
    assert "--skip-connections" in capsys.readouterr().err


def test_compare_script_scores_both_models(tmp_path, capsys):
    import json

    compare = load_script("compare_skip_dit")
    out = tmp_path / "compare.json"
    assert compare.main(["--base", DEMO_PATH, "--skip", DEMO_PATH, "--prompts", "1", "--steps", "2",
                         "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["base_accuracy"] == report["skip_accuracy"] and report["base_accuracy"]["n"] == 1
    assert report["ssim"] == pytest.approx(1.0)  # the same model: the same video
    assert "PSNR" in capsys.readouterr().out
