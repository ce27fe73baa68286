"""The multi-process engine's failures are loud, fast and clean (CPU, gloo, spawned workers)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from videosys import LatteConfig, VideoSysEngine
from videosys.core.engine import WorkerError

from distributed import SeedRank0Refuses

pytestmark = pytest.mark.slow  # multi-process / compile: `pytest -m 'not slow'` leaves it out

PROMPT = "a red circle moving to the right"
RUN = dict(seed=1, num_frames=5, height=48, width=80, num_inference_steps=3)


def tiny(**kw):
    return LatteConfig(preset="tiny", progress_bar=False, **kw)


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a reparented child may wait unreaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def run_script(tmp_path, body: str, **popen) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **popen)


@pytest.mark.timeout(120)
def test_stopped_worker_fails_the_call_within_the_heartbeat_timeout():
    engine = VideoSysEngine(tiny(num_gpus=2, heartbeat_timeout=2.0))
    pid = engine.workers[0].pid
    try:
        os.kill(pid, signal.SIGSTOP)  # without the watchdog, gloo waits 30 minutes for it
        start = time.monotonic()
        with pytest.raises(WorkerError, match="rank 1 stopped responding: no heartbeat"):
            engine.generate(PROMPT, **RUN)
        assert time.monotonic() - start < 20  # bounded by the 2 s heartbeat timeout (plus a loaded machine's slack)
        assert not engine.workers and not running(pid)
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_second_engine_is_refused_and_rank0_errors_surface_at_once():
    engine = VideoSysEngine(tiny(num_gpus=2))
    with pytest.raises(RuntimeError, match="already running in this process"):
        VideoSysEngine(tiny(num_gpus=2))
    assert engine.generate(PROMPT, **RUN).video.shape == (1, 5, 48, 80, 3)  # the first engine is intact
    pids = [p.pid for p in engine.workers]
    start = time.monotonic()
    # rank 0 fails alone (the workers got seed 1 and wait in a collective for it): its own error, at once
    with pytest.raises(RuntimeError, match="rank 0's own failure"):
        engine.generate(PROMPT, **{**RUN, "seed": SeedRank0Refuses()})
    assert time.monotonic() - start < 8  # was 15 s (a 5 s wait, then a 10 s join)
    assert not engine.workers and not any(running(pid) for pid in pids)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig,busy", [(signal.SIGKILL, False), (signal.SIGTERM, True)])
def test_workers_exit_when_rank0_dies(tmp_path, sig, busy):
    proc = run_script(tmp_path, f"""
        import time
        from videosys import LatteConfig, VideoSysEngine

        if __name__ == "__main__":
            engine = VideoSysEngine(LatteConfig(preset="tiny", progress_bar=False, num_gpus=2))
            print("workers", *[p.pid for p in engine.workers], flush=True)
            while True:
                if {busy}:
                    engine.generate("a dog", num_frames=5, height=48, width=80, num_inference_steps=200)
                else:
                    time.sleep(1)
    """)
    try:
        line = proc.stdout.readline()
        assert line.startswith("workers"), proc.stderr.read()[-3000:]
        pids = [int(p) for p in line.split()[1:]]
        time.sleep(1.0)  # busy: rank 0 is inside a call now
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(pid) for pid in pids), "a worker outlived rank 0"
    finally:
        proc.kill()
        for pid in locals().get("pids", []):
            if running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_script_without_main_guard_is_stopped_with_a_clear_error(tmp_path):
    proc = run_script(tmp_path, """
        from videosys import LatteConfig, VideoSysEngine

        print("script body ran", flush=True)
        engine = VideoSysEngine(LatteConfig(preset="tiny", progress_bar=False, num_gpus=2))
        print("engine built", flush=True)
    """)
    try:
        out, err = proc.communicate(timeout=100)  # before: rank 0 waited 30 minutes for the worker that died
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert 'if __name__ == "__main__":' in err and "WorkerError: rank 1 stopped" in err, err[-3000:]
    assert "engine built" not in out and out.count("script body ran") == 2  # rank 0, and the worker's re-import
