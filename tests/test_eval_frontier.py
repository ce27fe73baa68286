"""eval/teacache/plot_frontier.py: speed-up from the timing stats, fidelity from the metrics, a PNG."""

import json

import pytest

from eval_helpers import load_eval_module

from videosys.eval import frontier as frontier_lib

frontier = load_eval_module("plot_frontier.py", "videosys_eval_plot_frontier")


def write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def test_speedup_and_metrics_per_variant(tmp_path, capsys):
    base = {"a-0.mp4": {"total_s": 10.0, "denoise_s": 8.0}, "b-0.mp4": {"total_s": 14.0, "denoise_s": 12.0},
            "c-0.mp4": {"total_s": 100.0, "denoise_s": 90.0},  # no accelerated twin: left out
            "w-0.mp4": {"total_s": 50.0, "denoise_s": 40.0, "first_of_engine": True}}  # warm-up: left out
    write(tmp_path / "baseline", "stats.json", {"videos": base})
    write(tmp_path / "teacache-fast", "stats.json",
          {"videos": {"a-0.mp4": {"total_s": 4.0, "denoise_s": 2.0}, "b-0.mp4": {"total_s": 4.0, "denoise_s": 3.0},
                      "w-0.mp4": {"total_s": 4.0, "denoise_s": 3.0}}})
    write(tmp_path / "teacache-fast", "metrics.json",
          {"metrics": {"psnr": {"value": 18.6}, "ssim": {"value": 0.67}, "lpips": {"value": 0.31}}})
    write(tmp_path / "pab", "stats.json", {"videos": {"a-0.mp4": {"total_s": 8.0, "denoise_s": 6.0}}})  # no metrics
    png = tmp_path / "f.png"
    assert frontier.main(["--family-dir", str(tmp_path), "--output", str(png)]) == 0
    points = json.loads((tmp_path / "f.json").read_text())
    assert [p["variant"] for p in points] == ["teacache-fast"]
    assert points[0]["speedup"] == pytest.approx(24.0 / 8.0)
    assert points[0]["psnr"] == 18.6 and points[0]["lpips"] == 0.31 and points[0]["videos"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr()
    assert "3.00x" in out.out and "pab: skipped" in out.err
    assert frontier_lib.frontier(str(tmp_path), time_key="denoise_s")[0]["speedup"] == pytest.approx(20.0 / 5.0)


def test_missing_baseline_is_an_error(tmp_path, capsys):
    (tmp_path / "pab").mkdir()
    assert frontier.main(["--family-dir", str(tmp_path)]) == 2
    assert "generate the baseline first" in capsys.readouterr().err


def test_vbench_panel_from_cal_vbench_scores(tmp_path, capsys):
    write(tmp_path / "baseline", "stats.json", {"videos": {"a-0.mp4": {"total_s": 9.0}}})
    write(tmp_path / "fast", "stats.json", {"videos": {"a-0.mp4": {"total_s": 3.0}}})
    write(tmp_path / "fast", "metrics.json", {"metrics": {"psnr": {"value": 20.0}, "lpips": {"value": 0.2}}})
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"baseline": {"total_score": 0.774}, "fast": {"total_score": 0.7669}}))
    assert frontier.main(["--family-dir", str(tmp_path), "--vbench-scores", str(scores)]) == 0
    (point,) = json.loads((tmp_path / "frontier.json").read_text())
    assert point["speedup"] == pytest.approx(3.0) and point["vbench"] == 0.7669 and point["ssim"] is None
    assert "76.69" in capsys.readouterr().out


def test_pareto_front_keeps_the_points_nothing_beats_on_both():
    from videosys.eval.frontier import pareto

    points = [(1.0, 60.0), (2.0, 50.0), (1.5, 40.0), (3.0, 30.0), (2.5, 20.0), (2.0, 45.0)]
    assert pareto(points) == [(1.0, 60.0), (2.0, 50.0), (3.0, 30.0)]
    assert pareto([]) == []
