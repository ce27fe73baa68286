"""Weight-only int8 (quantize="int8", torchao) on the Latte demo model against fp32: PSNR of each video against
its fp32 one and the CPU time per video, printed as a table and written to benchmarks/bench_int8_demo.json.

    OMP_NUM_THREADS=1 python scripts/bench_int8.py [--prompts 6]
"""

import argparse
import os
import platform
import sys
import time

import torch

from videosys.core.engine import build_pipeline
from videosys.eval.metrics import psnr_frames
from videosys.models.latte.pipeline import LatteConfig
from videosys.utils.demo_data import caption, combinations
from videosys.utils.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(pipeline, prompts):
    videos, seconds = [], []
    for prompt in prompts:
        start = time.perf_counter()
        videos.append(pipeline.generate(prompt, seed=0).video[0])
        seconds.append(time.perf_counter() - start)
    return videos, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=6)
    args = parser.parse_args(argv)
    prompts = [caption(*c) for c in combinations()[::max(1, len(combinations()) // args.prompts)][:args.prompts]]
    rows = {}
    for mode in ("none", "int8"):
        pipeline = build_pipeline(LatteConfig(preset="demo", progress_bar=False, quantize=mode))
        run(pipeline, prompts[:1])  # warm-up
        rows[mode] = run(pipeline, prompts)
    ref, out = rows["none"][0], rows["int8"][0]
    to01 = lambda v: v.permute(0, 3, 1, 2).float() / 255  # noqa: E731
    psnr = [float(psnr_frames(to01(a), to01(b)).mean()) for a, b in zip(ref, out)]
    fp32_s, int8_s = (sum(rows[m][1]) / len(prompts) for m in ("none", "int8"))
    print(f"{'weights':<8}{'s / video':>12}{'PSNR vs fp32 (dB)':>20}")
    print(f"{'fp32':<8}{fp32_s:>12.3f}{'-':>20}")
    print(f"{'int8':<8}{int8_s:>12.3f}{sum(psnr) / len(psnr):>20.2f}")
    write_json(os.path.join(ROOT, "benchmarks", "bench_int8_demo.json"), dict(
        command="OMP_NUM_THREADS=1 python scripts/bench_int8.py" + (f" --prompts {args.prompts}"),
        model="latte demo (videosys/assets/demo-latte), 50 DDIM steps, cfg 7.5, seed 0, CPU fp32 compute",
        prompts=prompts, psnr_db=psnr, mean_psnr_db=sum(psnr) / len(psnr), fp32_s_per_video=fp32_s,
        int8_s_per_video=int8_s, threads=torch.get_num_threads(), machine=platform.processor() or platform.machine(),
        note="measured on the shared 2-core development machine with other jobs running: times are noisy"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
