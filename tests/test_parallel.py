"""The parallel engine on CPU (gloo, spawned processes): sp, cfg and cfg x sp reproduce one process."""

import os
import subprocess
import sys

import pytest

from videosys import LatteConfig, VideoSysEngine, read_video
from videosys.core.engine import WorkerError

from distributed import generate_per_cache

pytestmark = pytest.mark.slow  # multi-process / compile: `pytest -m 'not slow'` leaves it out

PROMPT = "a red circle moving to the right"
# 5 frames and a 3x5 patch grid (48x80 px): neither divides by 2, so the padding paths run too
RUN = dict(seed=1, num_frames=5, height=48, width=80, num_inference_steps=10)
CACHES = ("none", "teacache-fast", "pab")


def tiny(**kw):
    return LatteConfig(preset="tiny", progress_bar=False, **kw)


@pytest.fixture(scope="module")
def single():
    return generate_per_cache(VideoSysEngine(tiny()), CACHES, PROMPT, **RUN)


@pytest.mark.timeout(120)
def test_dead_worker_raises_naming_its_rank():
    engine = VideoSysEngine(tiny(num_gpus=2))
    engine.workers[0].kill()
    engine.workers[0].join()
    with pytest.raises(WorkerError, match="rank 1"):
        engine.generate(PROMPT, **RUN)
    assert not engine.workers  # shut down: no stray process left
    with pytest.raises(RuntimeError, match="shut down"):
        engine.generate(PROMPT, **RUN)


@pytest.mark.timeout(120)
def test_worker_error_is_reported_with_rank():
    from distributed import SeedEveryRankRefuses

    engine = VideoSysEngine(tiny(num_gpus=2))
    try:
        for bad in ({"height": 50}, {"seed": "x"}):  # refused before any rank runs the call, naming the field
            with pytest.raises(ValueError, match=next(iter(bad))):
                engine.generate(PROMPT, **{**RUN, **bad})
        with pytest.raises(WorkerError, match="rank 1 (failed|died)"):  # every rank raises ValueError; rank 1 named
            engine.generate(PROMPT, **{**RUN, "seed": SeedEveryRankRefuses(1)})
    finally:
        engine.shutdown()


@pytest.mark.timeout(300)
def test_torchrun_example(tmp_path, single):
    out = tmp_path / "tr.mp4"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    from distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "examples/latte/sample.py", "--preset", "tiny", "--output", str(out), "--num-frames", "4", "--steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("saved") == 1  # rank 0 alone writes and reports
    frames, fps = read_video(str(out))
    assert frames.shape == (4, 64, 64, 3) and fps == 8
    one = VideoSysEngine(tiny()).generate(PROMPT, seed=0, num_frames=4, num_inference_steps=3).video[0]
    assert abs(frames.astype(float) - one.numpy().astype(float)).mean() < 12  # same clip through H.264


@pytest.mark.timeout(120)
def test_worker_error_carries_the_workers_traceback():
    from distributed import SeedLostInTransit

    engine = VideoSysEngine(tiny(num_gpus=2))
    with pytest.raises(WorkerError, match="rank 1") as caught:
        engine.generate(PROMPT, **{**RUN, "seed": SeedLostInTransit(1)})  # only rank 1 fails (unpickling the call)
    message = str(caught.value)
    assert "Traceback (most recent call last)" in message and "_explode" in message
    assert "RuntimeError: this seed cannot reach the worker" in message
    assert not engine.workers
