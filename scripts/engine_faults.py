"""How fast a multi-process call fails, per fault: prints a table and writes JSON.

    python scripts/engine_faults.py [--output engine_faults.json] [--heartbeat-timeout 2]

Faults (tiny Latte, 2 CPU processes, gloo): a worker SIGKILLed, a worker SIGSTOPped (caught by the
heartbeat), a worker failing alone (its traceback delivered), rank 0 failing alone. Each row is the
seconds from the call to the exception, and the exception's first line.
"""

import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

RUN = dict(num_frames=5, height=48, width=80, num_inference_steps=3)


def timed_failure(engine, fault, seed):
    fault(engine)
    start = time.monotonic()
    try:
        engine.generate("a red circle moving to the right", seed=seed, **RUN)
    except BaseException as err:  # noqa: BLE001 - what is measured is which error, and when
        return time.monotonic() - start, f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return time.monotonic() - start, "no error"


def main() -> int:
    from distributed import SeedLostInTransit, SeedRank0Refuses

    from videosys import LatteConfig, VideoSysEngine
    from videosys.utils.files import write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="engine_faults.json")
    p.add_argument("--heartbeat-timeout", type=float, default=2.0)
    args = p.parse_args()

    def stop(engine):
        os.kill(engine.workers[0].pid, signal.SIGSTOP)

    faults = {
        "worker SIGKILL": (lambda e: (e.workers[0].kill(), e.workers[0].join()), 1),
        "worker SIGSTOP": (stop, 1),
        "worker raises alone": (lambda e: None, SeedLostInTransit(1)),
        "rank 0 raises alone": (lambda e: None, SeedRank0Refuses()),
    }
    rows = []
    for name, (fault, seed) in faults.items():
        engine = VideoSysEngine(LatteConfig(preset="tiny", progress_bar=False, num_gpus=2,
                                            heartbeat_timeout=args.heartbeat_timeout))
        pids = [w.pid for w in engine.workers]
        seconds, error = timed_failure(engine, fault, seed)
        for pid in pids:  # a stopped worker that somehow survived must not linger
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        rows.append({"fault": name, "seconds_to_error": round(seconds, 2), "error": error[:120]})
        engine.shutdown()
    print(f"{'fault':<22} {'s to error':>10}  error")
    for row in rows:
        print(f"{row['fault']:<22} {row['seconds_to_error']:>10.2f}  {row['error']}")
    write_json(args.output, {"heartbeat_timeout": args.heartbeat_timeout, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
