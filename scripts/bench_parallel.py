"""Per-step time and communication share of the parallel engine, for 1..N processes.

    python scripts/bench_parallel.py --model latte --preset tiny --worlds 1 2          # CPU, gloo
    python scripts/bench_parallel.py --model latte --worlds 1 2 4 8 --cfg-parallel     # GPUs, nccl

Each world size runs in its own processes (nccl on CUDA, gloo on CPU). Inside every rank the
collectives of videosys.core.comm are timed (synchronising the device around each), so the
table shows how much of a denoising step is communication. Prints a table, writes JSON.
"""

import argparse
import os
import time

import torch
import torch.multiprocessing as mp



def _time_collectives(comm, device_type: str) -> dict:
    spent = {"s": 0.0, "calls": 0}
    for name in ("all_to_all", "gather", "all_reduce_sum"):
        original = getattr(comm, name)

        def timed(*args, _original=original, **kwargs):
            if device_type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = _original(*args, **kwargs)
            if device_type == "cuda":
                torch.cuda.synchronize()
            spent["s"] += time.perf_counter() - start
            spent["calls"] += 1
            return out

        setattr(comm, name, timed)
    return spent


def _rank(rank: int, world: int, port: int, config, run: dict, repeats: int, results) -> None:
    import torch.distributed as dist

    from videosys.core import comm
    from videosys.core.engine import _build, _init_process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device_type = config.torch_device().type
    if world > 1:
        _init_process_group(rank, world, device_type)
    pipeline = _build(config, rank) if world > 1 else config.pipeline_cls.from_config(config)
    spent = _time_collectives(comm, device_type)
    pipeline.generate(**run)  # warm-up
    steps, comm_s, denoise_s = 0, 0.0, 0.0
    for _ in range(repeats):
        spent["s"] = 0.0
        out = pipeline.generate(**run)
        steps += out.stats["steps"]
        denoise_s += out.stats["denoise_s"]
        comm_s += spent["s"]
    results[rank] = {"step_ms": denoise_s / steps * 1000, "comm_ms": comm_s / steps * 1000}
    if world > 1:
        dist.destroy_process_group()


def measure(config, world: int, run: dict, repeats: int) -> dict:
    import dataclasses

    from videosys.core.engine import _free_port

    config = dataclasses.replace(config, num_gpus=world, cfg_parallel=config.cfg_parallel and world % 2 == 0)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(world, _free_port(), config, run, repeats, results), nprocs=world,
                           start_method="spawn")
        ranks = [results[r] for r in range(world)]
    step = max(r["step_ms"] for r in ranks)  # the slowest rank sets the pace
    comm_ms = max(r["comm_ms"] for r in ranks)
    return {"world": world, "cfg_parallel": config.cfg_parallel, "step_ms": step, "comm_ms": comm_ms,
            "comm_share": comm_ms / step if step else 0.0}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="latte")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--model-path")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cfg-parallel", action="store_true")
    parser.add_argument("--num-frames", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="outputs/bench_parallel.json")
    args = parser.parse_args()

    from videosys.models import config_class

    fields = {"progress_bar": False, "cfg_parallel": args.cfg_parallel}
    fields.update({"model_path": args.model_path} if args.model_path else {"preset": args.preset})
    config = config_class(args.model)(**fields)
    run = {"prompt": "a red circle moving to the right", "seed": 0, "num_inference_steps": args.steps}
    run.update({k: v for k, v in (("num_frames", args.num_frames), ("height", args.height),
                                  ("width", args.width)) if v})
    rows = [measure(config, world, run, args.repeats) for world in args.worlds]
    base = rows[0]["step_ms"]
    print(f"{args.model} ({args.model_path or args.preset}) on {config.torch_device()}, "
          f"{config.num_frames if not args.num_frames else args.num_frames} frames, {args.steps} steps")
    print(f"{'processes':<10}{'mesh':<12}{'ms / step':>11}{'comm ms':>9}{'comm %':>8}{'speed-up':>10}")
    for row in rows:
        mesh = f"cfg2 x sp{row['world'] // 2}" if row["cfg_parallel"] else f"sp{row['world']}"
        print(f"{row['world']:<10}{mesh:<12}{row['step_ms']:>11.1f}{row['comm_ms']:>9.1f}"
              f"{100 * row['comm_share']:>7.1f}%{base / row['step_ms']:>9.2f}x")
    from videosys.utils.files import write_json

    write_json(args.output, {"config": vars(args), "rows": rows})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
