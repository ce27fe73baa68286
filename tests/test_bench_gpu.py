"""scripts/bench_gpu.sh's CPU dry run: every family, ours against diffusers on the same weights, the caches."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_every_family(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts/bench_gpu.sh"), "--dry-run", "--no-compile", "--repeats", "1",
                           "--cache-steps", "2", "--sp", "--output", str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    families = {r["family"]: r for r in result["families"]}
    assert set(families) == {"latte", "open-sora", "open-sora-plan", "cogvideox"}
    assert result["dry_run"] and result["sp_scaling"] == {} and result["complete"]
    for family, row in families.items():
        assert row["ms"]["ours eager"] > 0
        assert {"teacache-slow", "pab", "none"} <= set(row["caches"]), family
        assert all(c["step_ms"] > 0 for c in row["caches"].values() if "step_ms" in c)
    for family in ("latte", "cogvideox"):  # diffusers has these two: same weights, same outputs
        assert families[family]["ms"]["diffusers eager"] > 0
        assert families[family]["max_abs_diff_vs_diffusers"] < 1e-4
    assert "ours eager" in proc.stdout and "caches:" in proc.stdout  # the table


def test_dry_run_wan_against_diffusers(tmp_path):
    """The opt-in Wan rows (Wan2.1-1.3B / 14B, Wan2.2-TI2V-5B shapes): ours against diffusers' WanTransformer3DModel
    on the same weights."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/bench_gpu.py"), "--dry-run", "--no-compile",
                           "--repeats", "1", "--cache-steps", "2", "--sp", "--families", "wan-14b,wan-ti2v-5b",
                           "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    families = {r["family"]: r for r in json.loads(out.read_text())["families"]}
    assert set(families) == {"wan-14b", "wan-ti2v-5b"}
    for row in families.values():
        assert row["ms"]["diffusers eager"] > 0 and row["max_abs_diff_vs_diffusers"] < 1e-4
        assert row["latent"][1] == (48 if row["family"] == "wan-ti2v-5b" else 16)


def test_refuses_without_cuda_unless_dry(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/bench_gpu.py"), "--families", "latte"],
                          capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode != 0 and "--dry-run" in proc.stderr


def test_offline_wheels_go_to_their_own_folder_without_the_index(tmp_path):
    """--wheels DIR (a lent GPU machine reaches no registry): pip installs exactly those wheels, no index, no
    dependency resolution, into /tmp/site, and the run then starts. A fake python records the calls."""
    log = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {log}\n")
    fake.chmod(0o755)
    (tmp_path / "whl").mkdir()
    (tmp_path / "whl" / "diffusers-0.42.1-py3-none-any.whl").write_text("")
    proc = subprocess.run(["bash", str(ROOT / "scripts/bench_gpu.sh"), "--wheels", str(tmp_path / "whl"),
                           "--families", "latte"], env={**os.environ, "PYTHON": str(fake)}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls[1].startswith("-m pip install") and "--no-index" in calls[1] and "--no-deps" in calls[1]
    assert "--target /tmp/site" in calls[1] and calls[1].endswith("diffusers-0.42.1-py3-none-any.whl")
    assert calls[2].endswith("scripts/bench_gpu.py --families latte")
