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
    assert "best at each end-to-end wall speed-up" in printed and "forecast-i2-o1-w1" in printed
    assert "best at each counted-work speed-up" in printed and "best at each transformer wall speed-up" in printed
    # counted work: a step-level cache's FLOPs are the computed steps' (plus its indicator's few on the others)
    assert results["none"]["work"] == 1.0 and results["pab-246"]["work"] <= 1.0
    assert results["teacache-1.0"]["work"] == pytest.approx(tea["computed_steps"] / 4, rel=0.05)
    assert [e["axis"] for e in report["frontier_work"]] == ["work"] * len(bench.TARGETS)
    with pytest.raises(ValueError, match="--first-seed must be >= 0"):
        bench.check(parsed("--first-seed", "-1"), config_class("latte")(preset="tiny"))


def test_default_variants_are_every_registered_sweep():
    """Every registered sweep that the model has numbers for: the demo model has MagCache ratios, the tiny
    random Latte none (its MagCache variants would only say "calibrate first")."""
    demo = bench.check(parsed(), config_class("latte")(preset="demo"))
    # not a UNet; forecast-s27: a schedule only the demo Wan has
    assert demo == [v for v in sweep_names() if not v.startswith("deepcache") and v != "forecast-s27"]
    assert demo[0] == "none"
    assert any(v.startswith("forecast-") for v in demo) and any(v.startswith("teacache-") for v in demo)
    tiny = bench.check(parsed(), config_class("latte")(preset="tiny"))
    calibrated = ("magcache", "forecast-s")  # ratios, compute schedules: the demo model's only
    assert tiny == [v for v in demo if not v.startswith(calibrated)] and "magcache" in demo and "forecast-s13" in demo
    # Wan has no published PAB setting: its sweep leaves PAB out instead of failing on it (`--model wan --preset demo`)
    wan = bench.check(parsed(), config_class("wan")(preset="tiny"))
    assert wan[0] == "none" and set(wan) < set(demo) and any(v.startswith("forecast-") for v in wan)
    assert not any(v.startswith("pab") for v in wan) and any(v.startswith("pab") for v in demo)


@pytest.mark.parametrize("argv,message", [
    (["--variants", "teacache-slow"], "must include none"),
    (["--variants", "none", "nosuchcache-3"], "unknown cache"),
    (["--variants", "none", "foca-3+pab"], "both act at the 'module' hook point"),  # a combination at one point
    (["--model", "cogvideox", "--peers"], "only with --model latte or wan"),
    (["--model", "wan", "--peers", "dbcache-F1B0-x"], "unknown peer variant"),
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
    assert text.splitlines()[1].split()[6] == "compute" and text.splitlines()[2].split()[6] == "reuse"


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


def test_counted_work_is_torch_flop_formulas_on_the_forwards():
    """ForwardMeter counts what torch's FlopCounterMode counts, on the module's forwards only, while counting."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from videosys.eval.work import ForwardMeter

    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    x = torch.randn(3, 10, 16)
    meter = ForwardMeter(model)
    model(x)
    assert meter.flops == 0 and meter.spent > 0  # timed, not counted
    meter.counting = True
    model(x)
    torch.randn(64, 64) @ torch.randn(64, 64)  # outside the forward: not counted
    with FlopCounterMode(display=False) as reference:
        model(x)  # counted by both: the meter has now seen two forwards
    assert meter.flops == 2 * reference.get_total_flops() == 2 * 2 * 3 * 10 * (16 * 64 + 64 * 16)
    meter.reset()
    assert (meter.flops, meter.spent) == (0, 0.0)


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


def test_pairs_default_members_and_what_check_combination_refuses():
    """Every registered method by its bare name (FasterCache also by its CFG part alone), none of the calibration
    recorders; each allowed pair once; a refused pair carries check_combination's reason."""
    from videosys.cache.registry import METHODS

    members = bench.check(parsed("--pairs"), config_class("latte")(preset="demo"))
    singles = [v for v in members if "+" not in v]
    assert singles[0] == "none" and "fastercache-cfg" in singles and "taylorseer" in singles
    assert not any(v.endswith("-recorder") for v in members) and "magcache" in singles  # the demo model has ratios
    assert set(singles[1:]) <= {n for m in METHODS.values() for n in m.pair_members}
    pairs = {frozenset(v.split("+")) for v in members if "+" in v}
    assert frozenset({"foca", "fastercache-cfg"}) in pairs and frozenset({"pab", "forecast"}) in pairs
    assert len(pairs) == len([v for v in members if "+" in v])
    _, _, refused = bench.pair_variants([], config_class("latte")(preset="demo").published_cache_settings())
    refused = {frozenset(k.split("+")): why for k, why in refused.items()}
    assert "both act at the 'module' hook point" in refused[frozenset({"pab", "taylorseer"})]
    assert frozenset({"teacache", "fbcache"}) in refused and not set(refused) & pairs
    assert "amplified" in refused[frozenset({"teacache", "forecast"})]  # measured worse than either (REFUSED_PAIRS)
    assert "less than either method alone" in refused[frozenset({"taylorseer", "fastercache-cfg"})]
    tiny = bench.check(parsed("--pairs"), config_class("latte")(preset="tiny"))
    assert "magcache" not in tiny  # no ratios for the random model: left out, not an error


def test_pair_rows_flag_a_pair_worse_than_both_and_a_dominating_member():
    results = {"none": {"speedup": 1.0}, "a": {"psnr": 30.0, "speedup": 1.5}, "b": {"psnr": 40.0, "speedup": 2.0},
               "a+b": {"psnr": 29.0, "speedup": 1.8}, "b+c": {"psnr": 20.0, "speedup": 3.0}}
    (row,) = bench.pair_rows(results)  # b+c: c never ran alone
    assert row["pair"] == "a+b" and row["worse_than_both"] and row["dominated_by"] == ["b"]
    assert row["additive_psnr"] == pytest.approx(-10 * __import__("math").log10(1e-3 + 1e-4))
    results["a+b"]["psnr"] = 35.0
    (row,) = bench.pair_rows(results)
    assert not row["worse_than_both"] and row["dominated_by"] == ["b"]
    assert "dominated by b" in bench.pairs_table([row])


def test_pairs_command_on_the_tiny_preset(tmp_path, capsys):
    """--pairs with given members: their allowed pairs run on the held-back (last) prompts, and the report says
    which pairs were refused and why."""
    out = tmp_path / "pairs.json"
    small = [*SMALL[2:], "--prompts", "1"]
    assert cli.main(["bench", "--model", "latte", "--preset", "tiny", "--prompt-set", "builtin", *small, "--pairs",
                     "--variants", "none", "foca-2", "fastercache-cfg", "pab-246", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompts"] == ["a dog running on the beach at sunset"]  # the last of the builtin set
    assert list(report["results"]) == ["none", "foca-2", "fastercache-cfg", "pab-246",
                                       "foca-2+fastercache-cfg", "fastercache-cfg+pab-246"]
    assert [r["pair"] for r in report["pairs"]] == ["foca-2+fastercache-cfg", "fastercache-cfg+pab-246"]
    assert list(report["refused_pairs"]) == ["foca-2+pab-246"]
    for row in report["pairs"]:
        psnr = [report["results"][m]["psnr"] for m in row["members"]]
        assert row["member_psnr"] == psnr and row["worse_than_both"] == (row["psnr"] < min(psnr))
    assert "pairs worse than both members" in capsys.readouterr().out
