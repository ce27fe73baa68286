"""Throughput of `videosys serve --max-batch B`: N jobs (different prompts and seeds, same size and steps) queued
before the server starts, the time from the first job's start to the last one's completion (the job
store's timestamps), for each B; a table, and JSON.

    OMP_NUM_THREADS=1 python scripts/bench_serve_batching.py --jobs 8 --batches 1 2 4 8 --threads 1

Each B runs in a fresh output folder on the one loaded engine (the server's whole path: the SQLite store,
the job thread, the mp4 writes). The batched videos equal the single ones (tests/test_serve.py).
"""

import argparse
import os
import platform
import tempfile
import time

import torch

from videosys.utils.files import write_json

PROMPTS = ["a red circle moving to the right", "a blue square moving up", "a green triangle moving to the left",
           "a yellow circle moving down"]


def run(engine, config, jobs: int, max_batch: int, steps: int, frames: int) -> float:
    from fastapi.testclient import TestClient

    from videosys.serve.app import RequestReader, batch_key, create_app
    from videosys.serve.jobs import JobStore

    folder = tempfile.mkdtemp(prefix="bench-serve-")
    store = JobStore(folder, max_queue=jobs)
    reader = RequestReader(config, config.model_name, "none", max_upload=1)
    for i in range(jobs):  # queued before the server starts: a restarted server's queue, all there at once
        request, shown, _ = reader.values({"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "steps": steps,
                                           "num_frames": frames}, None)
        request["shown"] = shown
        store.submit(request, config.model_name, batch_key(config, request, False))
    store.close()
    with TestClient(create_app(engine, folder, max_queue=jobs, max_batch=max_batch)) as client:
        while True:  # polled slowly: the poll shares the CPU with the generation
            data = client.get("/v1/videos?limit=100").json()["data"]
            if all(v["status"] in ("completed", "failed") for v in data):
                break
            time.sleep(0.1)
    assert all(v["status"] == "completed" for v in data), [v["error"] for v in data]
    assert max(v["stats"]["batch_size"] for v in data) == min(max_batch, jobs)
    store = JobStore(folder, max_queue=jobs)
    rows = store.list()
    store.close()
    return max(r["finished"] for r in rows) - min(r["started"] for r in rows)  # the store's own clock


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="a Latte preset (demo: the trained 3 MB model)")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch size; the fastest is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--output", default="benchmarks/bench_serve_batching_demo.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from videosys import LatteConfig, VideoSysEngine

    config = LatteConfig(preset=args.preset, progress_bar=False)
    engine = VideoSysEngine(config)
    run(engine, config, 2, 2, 2, args.frames)  # warm-up (first calls allocate)
    walls = {batch: [] for batch in args.batches}
    for _ in range(args.repeats):  # interleaved: a change of the machine's load falls on every batch size alike
        for batch in args.batches:
            walls[batch].append(run(engine, config, args.jobs, batch, args.steps, args.frames))
    rows = [{"max_batch": batch, "wall_s": round(min(w), 3), "videos_per_s": round(args.jobs / min(w), 3),
             "all_wall_s": [round(x, 3) for x in w]} for batch, w in walls.items()]
    base = rows[0]["wall_s"]
    print(f"{args.jobs} jobs, latte {args.preset}, {args.frames} frames x {args.steps} steps, "
          f"{torch.get_num_threads()} thread(s), {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}")
    print(f"{'max_batch':>9} {'wall s':>8} {'videos/s':>9} {'speed-up':>8}")
    for row in rows:
        row["speedup"] = round(base / row["wall_s"], 3)
        print(f"{row['max_batch']:>9} {row['wall_s']:>8.2f} {row['videos_per_s']:>9.2f} {row['speedup']:>7.2f}x")
    report = {"script": "scripts/bench_serve_batching.py", "preset": args.preset, "jobs": args.jobs,
              "steps": args.steps, "frames": args.frames, "threads": torch.get_num_threads(),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
              "load_average": os.getloadavg(), "results": rows}
    write_json(args.output, report)
    engine.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
