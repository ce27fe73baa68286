"""The kernel-level figures behind the CPU fast paths (docs/speed.md), each an interleaved median:

    python scripts/bench_cpu_kernels.py --threads 1

- tanh GELU on 8192 x 1024 fp32: ATen eager, inductor as is, inductor with the CPU rewrites (1 + tanh -> 2 sigmoid,
  models/modules/inductor_passes.py);
- Latte's issue-size fc1 + GELU (8192 x 256 -> 1024): out of place vs `gelu_fresh` in place
  (models/modules/attention.py);
- CogVideoX's issue-size attention (2, 8, 1056, 32): v strided as projected, q / k contiguous (after their norms),
  vs all three contiguous (what CogVideoXBlock now hands the flash kernel).
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from videosys.models.modules.attention import gelu_fresh
from videosys.models.modules.inductor_passes import CPURewrites


def medians(fns: dict, repeats: int) -> dict:
    times = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up (compiles)
            fn(), fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    x = torch.randn(8192, 1024, generator=g)
    gelu = lambda t: F.gelu(t, approximate="tanh")  # noqa: E731
    plain = torch.compile(gelu, dynamic=False)
    rewritten = torch.compile(lambda t: gelu(t), dynamic=False, options={"post_grad_custom_post_pass": CPURewrites()})
    cases = {"tanh GELU, 8192 x 1024": {"ATen eager": lambda: gelu(x), "inductor": lambda: plain(x),
                                        "inductor + CPU rewrites": lambda: rewritten(x)}}

    h, w, b = torch.randn(8192, 256, generator=g), torch.randn(1024, 256, generator=g) * 0.05, torch.zeros(1024)
    cases["fc1 + GELU, 8192 x 256 -> 1024"] = {"out of place": lambda: gelu(F.linear(h, w, b)),
                                               "in place (gelu_fresh)": lambda: gelu_fresh(F.linear(h, w, b))}

    def heads(contiguous):
        t = torch.randn(2, 1056, 8, 32, generator=g).transpose(1, 2)  # (B, H, L, d) view of the projection
        return t.contiguous() if contiguous else t
    q, k, v_strided = heads(True), heads(True), heads(False)
    v = v_strided.contiguous()
    cases["attention (2, 8, 1056, 32)"] = {"v strided": lambda: F.scaled_dot_product_attention(q, k, v_strided),
                                           "all contiguous": lambda: F.scaled_dot_product_attention(q, k, v)}

    print(f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved calls")
    for case, fns in cases.items():
        ms = medians(fns, args.repeats)
        print(case + ": " + ", ".join(f"{name} {t:.2f} ms" for name, t in ms.items()))


if __name__ == "__main__":
    main()
