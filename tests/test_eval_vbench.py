"""eval/teacache/vbench/cal_vbench.py: the papers' aggregation on fixture score files, against hand-computed totals."""

import json
import os

import pytest

from eval_helpers import load_eval_module

cal = load_eval_module("vbench/cal_vbench.py", "videosys_eval_cal_vbench")

# raw VBench scores (fractions, as vbench writes them)
RAW = {
    "subject_consistency": 0.9573, "background_consistency": 0.9662, "temporal_flickering": 0.9801,
    "motion_smoothness": 0.9810, "dynamic_degree": 0.6000, "aesthetic_quality": 0.5600, "imaging_quality": 0.6100,
    "object_class": 0.8600, "multiple_objects": 0.3500, "human_action": 0.9000, "color": 0.8500,
    "spatial_relationship": 0.4100, "scene": 0.3600, "temporal_style": 0.2400, "appearance_style": 0.2300,
    "overall_consistency": 0.2700,
}


def write_results(folder, groups):
    """vbench's layout: {dimension: [score, [per-video results]]}, here split over several files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, dims in enumerate(groups):
        data = {d: [RAW[d], [{"video_path": "x.mp4", "video_results": RAW[d]}]] for d in dims}
        (folder / f"part{i}_eval_results.json").write_text(json.dumps(data))


def hand_computed():
    n = {
        "subject_consistency": (0.9573 - 0.1462) / (1 - 0.1462),
        "background_consistency": (0.9662 - 0.2615) / (1 - 0.2615),
        "temporal_flickering": (0.9801 - 0.6293) / (1 - 0.6293),
        "motion_smoothness": (0.9810 - 0.706) / (0.9975 - 0.706),
        "dynamic_degree": 0.6, "aesthetic_quality": 0.56, "imaging_quality": 0.61,
        "object_class": 0.86, "multiple_objects": 0.35, "human_action": 0.9, "color": 0.85,
        "spatial_relationship": 0.41, "scene": 0.36 / 0.8222,
        "temporal_style": 0.24 / 0.364, "appearance_style": (0.23 - 0.0009) / (0.2855 - 0.0009),
        "overall_consistency": 0.27 / 0.364,
    }
    quality = (n["subject_consistency"] + n["background_consistency"] + n["temporal_flickering"]
               + n["motion_smoothness"] + 0.5 * n["dynamic_degree"] + n["aesthetic_quality"]
               + n["imaging_quality"]) / 6.5
    semantic = sum(n[d] for d in cal.SEMANTIC_DIMENSIONS) / 9
    return quality, semantic, (4 * quality + semantic) / 5


def test_totals_match_hand_computed(tmp_path, capsys):
    folder = tmp_path / "teacache-slow"
    write_results(folder, [cal.QUALITY_DIMENSIONS, cal.SEMANTIC_DIMENSIONS[:4], cal.SEMANTIC_DIMENSIONS[4:]])
    out = tmp_path / "scores.json"
    assert cal.main(["--score_dir", str(folder), "--output", str(out)]) == 0  # TeaCache's README's spelling
    result = json.loads(out.read_text())["teacache-slow"]
    quality, semantic, total = hand_computed()
    assert result["quality_score"] == pytest.approx(quality, abs=1e-12)
    assert result["semantic_score"] == pytest.approx(semantic, abs=1e-12)
    assert result["total_score"] == pytest.approx(total, abs=1e-12)
    assert 0.78 < total < 0.79  # 78.15%: near the published Latte totals, so the fixture is sane
    assert result["partial"] is False
    assert f"{100 * total:.2f}%" in capsys.readouterr().out


def test_partial_folder_is_marked_and_scored_over_what_it_has(tmp_path):
    folder = tmp_path / "v"
    write_results(folder, [["temporal_flickering", "dynamic_degree"]])
    result = cal.aggregate(cal.load_scores(str(folder)))
    expected = ((0.9801 - 0.6293) / (1 - 0.6293) + 0.5 * 0.6) / 1.5
    assert result["quality_score"] == pytest.approx(expected, abs=1e-12)
    assert result["semantic_score"] is None and result["total_score"] is None
    assert result["partial"] and len(result["missing_dimensions"]) == 14


def test_unknown_dimension_and_empty_folder_are_errors(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x_eval_results.json").write_text(json.dumps({"not_a_dimension": [0.5, []]}))
    assert cal.main(["--score-dir", str(tmp_path / "bad")]) == 2
    (tmp_path / "empty").mkdir()
    assert cal.main(["--score-dir", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "not_a_dimension" in err and "no *_eval_results.json" in err


def test_run_vbench_takes_teacaches_flags(capsys):
    run = load_eval_module("vbench/run_vbench.py", "videosys_eval_run_vbench")
    with pytest.raises(SystemExit):
        run.main(["--help"])
    usage = capsys.readouterr().out
    assert "--video_path" in usage and "--save_path" in usage


def test_run_vbench_knows_every_dimension():
    run = load_eval_module("vbench/run_vbench.py", "videosys_eval_run_vbench")
    assert set(cal.DIMENSIONS) == set(cal.QUALITY_DIMENSIONS) | set(cal.SEMANTIC_DIMENSIONS)
    assert len(cal.DIMENSIONS) == 16
    for dimension in cal.DIMENSIONS:
        files = run.required_files(dimension)
        assert (files == []) == (dimension == "temporal_flickering")  # the one dimension without weights


def vbench_python():
    """The VBench environment's python (setup_env.sh makes eval/teacache/vbench/.venv), or $VBENCH_PYTHON."""
    import os

    from eval_helpers import ROOT

    for path in (os.environ.get("VBENCH_PYTHON"), os.path.join(ROOT, "eval", "teacache", "vbench", ".venv", "bin", "python")):
        if path and os.path.exists(path):
            return path
    return None


def test_run_vbench_temporal_flickering_on_real_files(tmp_path):
    """In the VBench environment, offline: the one dimension without weights, on files named as VBench
    expects; its score is 1 - mean |frame difference| / 255, recomputed here from the decoded frames."""
    import subprocess

    import numpy as np

    from videosys import read_video, save_video

    python = vbench_python()
    if python is None:
        pytest.skip("no VBench environment (bash eval/teacache/vbench/setup_env.sh, or set VBENCH_PYTHON)")
    run = load_eval_module("vbench/run_vbench.py", "videosys_eval_run_vbench")
    videos = tmp_path / "videos"
    gray = np.full((6, 32, 32, 3), 128, np.uint8)
    flicker = gray.copy()
    flicker[1::2] = 160  # every other frame brighter: |difference| 32
    save_video(gray, str(videos / "In a still frame, a stop sign-0.mp4"))
    save_video(flicker, str(videos / "In a still frame, a stop sign-1.mp4"))
    out = tmp_path / "scores"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([python, os.path.join(os.path.dirname(run.__file__), "run_vbench.py"), "--video-dir",
                           str(videos), "--output-dir", str(out), "--dimensions", "temporal_flickering",
                           "subject_consistency", "--device", "cpu"],
                          capture_output=True, text=True, env={**env, "VBENCH_CACHE_DIR": str(tmp_path / "cache")},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "subject_consistency: skipped: weights missing" in proc.stdout
    expected = []
    for seed in (0, 1):
        frames = read_video(str(videos / f"In a still frame, a stop sign-{seed}.mp4"))[0].astype(np.float32)
        expected.append((255 - np.mean([np.abs(frames[i + 1] - frames[i]).mean() for i in range(5)])) / 255)
    score = json.loads((out / "temporal_flickering_eval_results.json").read_text())["temporal_flickering"][0]
    assert score == pytest.approx(np.mean(expected), abs=1e-6)
    assert expected[0] > 0.99 and expected[1] < 0.9  # the flickering video scores lower
    result = cal.aggregate(cal.load_scores(str(out)))
    assert result["quality_score"] == pytest.approx((score - 0.6293) / (1 - 0.6293), abs=1e-12)
