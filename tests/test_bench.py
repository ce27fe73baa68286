"""`videosys bench` (videosys/eval/bench.py): the command on the tiny preset, its checks before any weight load,
the frontier table, and diffusers' caches drawn in the same run (--peers)."""

import argparse
import json

import pytest

from videosys import cli
from videosys.cache import sweep_names
from videosys.eval import bench
from videosys.models import config_class

SMALL = ["--prompts", "2", "--steps", "4", "--num-frames", "4", "--height", "48", "--width", "48", "--repeats", "1"]


def parsed(*argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_command_on_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "frontier.json"
    assert cli.main(["bench", "--model", "latte", "--preset", "tiny", "--prompt-set", "builtin", *SMALL,
                     "--variants", "none", "teacache-1.0", "forecast-i2-o1-w1", "pab-246", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert list(results) == ["none", "teacache-1.0", "forecast-i2-o1-w1", "pab-246"] and report["steps"] == 4
    assert results["none"]["speedup"] == 1.0 and "psnr" not in results["none"]
    forecast = results["forecast-i2-o1-w1"]["caches"]["forecast"]
    assert forecast["reused_step_indices"] == [2]  # 4 steps: step 0 (warm-up), 1 (interval), 3 (the last) compute
    tea = results["teacache-1.0"]["caches"]["teacache"]
    assert tea["computed_steps"] + tea["reused_steps"] == 4
    for variant in ("teacache-1.0", "forecast-i2-o1-w1", "pab-246"):
        row = results[variant]
        assert row["framework"] == "videosys" and row["speedup"] > 0 and 0 < row["ssim"] <= 1
        assert row["method"] == variant.split("-")[0]
    assert "accuracy" not in results["pab-246"]  # builtin prompts: no tracker score
    assert [e["speedup_at_least"] for e in report["frontier"]] == list(bench.TARGETS)
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "best at each speed-up" in printed and "forecast-i2-o1-w1" in printed


def test_default_variants_are_every_registered_sweep():
    """Every registered sweep that the model has numbers for: the demo model has MagCache ratios, the tiny
    random Latte none (its MagCache variants would only say "calibrate first")."""
    demo = bench.check(parsed(), config_class("latte")(preset="demo"))
    assert demo == sweep_names() and demo[0] == "none"
    assert any(v.startswith("forecast-") for v in demo) and any(v.startswith("teacache-") for v in demo)
    tiny = bench.check(parsed(), config_class("latte")(preset="tiny"))
    assert tiny == [v for v in demo if not v.startswith("magcache")] and "magcache" in demo
    # Wan has no published PAB setting: its sweep leaves PAB out instead of failing on it (`--model wan --preset demo`)
    wan = bench.check(parsed(), config_class("wan")(preset="tiny"))
    assert wan[0] == "none" and set(wan) < set(demo) and any(v.startswith("forecast-") for v in wan)
    assert not any(v.startswith("pab") for v in wan) and any(v.startswith("pab") for v in demo)


@pytest.mark.parametrize("argv,message", [
    (["--variants", "teacache-slow"], "must include none"),
    (["--variants", "none", "nosuchcache-3"], "unknown cache"),
    (["--variants", "none", "foca-3+pab"], "both act at the 'module' hook point"),  # a combination at one point
    (["--model", "cogvideox", "--peers"], "only with --model latte"),
    (["--peers", "taylorseer-x"], "unknown peer variant"),
    (["--repeats", "0"], "--repeats must be"),
])
def test_bad_input_fails_before_any_weight_load(argv, message, capsys, monkeypatch):
    from videosys.core import engine

    monkeypatch.setattr(engine.VideoSysEngine, "__init__", lambda *a, **k: pytest.fail("built an engine"))
    assert bench.main(["--preset", "tiny", *argv]) == 2
    assert message in capsys.readouterr().err


def test_table_says_whether_a_variant_may_reuse_the_last_step():
    assert bench.reuses_last_step("teacache-0.2") is False and bench.reuses_last_step("forecast-i2") is False
    assert bench.reuses_last_step("fbcache") is True and bench.reuses_last_step("magcache-0.1") is True
    assert bench.reuses_last_step("pab+teacache") is True  # one method that may is enough
    assert bench.reuses_last_step("none") is None
    row = dict(total_s=1.0, transformer_s=1.0, speedup=1.5, framework="videosys")
    text = bench.table({"easycache": {**row, "reuses_last_step": False}, "fbcache": {**row, "reuses_last_step": True}},
                       False, False)
    assert "last step" in text.splitlines()[0]
    assert text.splitlines()[1].split()[5] == "compute" and text.splitlines()[2].split()[5] == "reuse"


def test_frontier_picks_the_best_at_or_above_each_speedup():
    results = {
        "none": dict(framework="videosys", speedup=1.0),
        "a": dict(framework="videosys", speedup=1.4, psnr=40.0, lpips=0.01),
        "b": dict(framework="videosys", speedup=1.9, psnr=30.0, lpips=0.03),
        "diffusers:none": dict(framework="diffusers", speedup=1.0),
        "diffusers:c": dict(framework="diffusers", speedup=1.5, psnr=35.0, lpips=0.005),
    }
    by_target = {e["speedup_at_least"]: e for e in bench.frontier(results, (1.35, 1.45, 1.8, 2.0))}
    assert by_target[1.35]["psnr"] == "a" and by_target[1.35]["lpips"] == "diffusers:c"
    assert by_target[1.45]["psnr"] == "diffusers:c" and by_target[1.45]["psnr_videosys"] == "b"
    assert by_target[1.8]["psnr"] == "b" and by_target[1.8]["psnr_diffusers"] is None
    assert by_target[2.0]["psnr"] is None
    text = bench.frontier_table(results, list(by_target.values()))
    assert ">= 1.45x" in text and "*diffusers:c 35.00 @1.50x" in text


def test_peers_run_in_the_same_rounds(tmp_path):
    """diffusers' LattePipeline on the demo folder with its TaylorSeer lite: fidelity against its own uncached run."""
    pytest.importorskip("diffusers")
    out = tmp_path / "peers.json"
    small = ["--prompts", "2", "--steps", "4", "--repeats", "1"]  # diffusers' Latte: the checkpoint's 16 frames
    assert bench.main(["--preset", "demo", *small, "--variants", "none", "forecast-i2-o1-w1",
                       "--peers", "taylorseer-lite-2", "--output", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["none", "forecast-i2-o1-w1", "diffusers:none", "diffusers:taylorseer-lite-2"]
    peer = results["diffusers:taylorseer-lite-2"]
    assert peer["framework"] == "diffusers" and peer["method"] == "diffusers:taylorseer-lite"
    assert results["diffusers:none"]["speedup"] == 1.0 and 10 < peer["psnr"] < 100
    assert 0 <= peer["accuracy"] <= 1 and peer["accuracy_detail"]["n"] == 2


def test_old_script_names_are_the_command():
    from eval_helpers import load_script

    assert load_script("bench_cache").main is bench.main
    assert load_script("bench_cache").cache_spec is bench.cache_spec


@pytest.mark.slow
def test_bench_vs_diffusers_runs_each_case_in_a_fresh_process(tmp_path):
    """scripts/bench_vs_diffusers.py (eager variants, small sizes): one child process per case, merged into one
    JSON; ours and diffusers' transformers on the same weights give the same output."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_vs_diffusers.py")
    spec = importlib.util.spec_from_file_location("bench_vs_diffusers", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "vs.json"
    script.main(["--no-compile", "--sizes", "small", "--repeats", "1", "--threads", "1", "--output", str(out)])
    results = json.loads(out.read_text())["results"]
    assert [(r["family"], r["size"]) for r in results] == [("latte", "small"), ("cogvideox", "small")]
    for r in results:
        assert set(r["ms"]) == {"ours eager", "diffusers eager"} and all(ms > 0 for ms in r["ms"].values())
        assert r["max_abs_diff_vs_diffusers_eager"]["ours eager"] < 1e-4
    with pytest.raises(SystemExit):
        script.main(["--families", "hunyuan", "--output", str(out)])
