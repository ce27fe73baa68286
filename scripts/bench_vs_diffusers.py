"""Our Latte transformer vs diffusers' LatteTransformer3DModel: same weights, same inputs.

    python scripts/bench_vs_diffusers.py                       # CPU-sized default
    python scripts/bench_vs_diffusers.py --layers 28 --heads 16 --head-dim 72 --frames 16 --size 64 --device cuda --dtype bf16

Prints a table (ms per transformer forward, CFG batch of 2) and writes JSON.
"""

import argparse
import time

import torch

from videosys.models.latte.transformer import LatteTransformer3DModel, LatteTransformerConfig
from videosys.utils.files import write_json


def timed_pair(fns, device, repeats: int) -> list[float]:
    """Median ms per call of each function, calls interleaved so drifts in machine load hit both alike."""
    import statistics

    times = [[] for _ in fns]
    for fn in fns:
        fn()  # warm-up
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="latent height = width")
    parser.add_argument("--text-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--output", default="outputs/bench_vs_diffusers.json")
    args = parser.parse_args()

    from diffusers import LatteTransformer3DModel as DiffusersLatte

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    dim = args.heads * args.head_dim
    config = LatteTransformerConfig(num_attention_heads=args.heads, attention_head_dim=args.head_dim,
                                    num_layers=args.layers, cross_attention_dim=dim, caption_channels=dim,
                                    sample_size=args.size, video_length=args.frames)
    theirs = DiffusersLatte(**config.diffusers_kwargs()).to(device, dtype).eval()
    ours = LatteTransformer3DModel(config).to(device, dtype).eval()
    ours.load_state_dict(theirs.state_dict())

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, args.frames, args.size, args.size, generator=g).to(device, dtype)
    text = torch.randn(2, args.text_tokens, dim, generator=g).to(device, dtype)
    t = torch.tensor([500, 500], device=device)
    with torch.inference_mode():
        ms_ours, ms_theirs = timed_pair(
            [lambda: ours(x, t, text),
             lambda: theirs(x, timestep=t, encoder_hidden_states=text, return_dict=False)], device, args.repeats)
        diff = (ours(x, t, text).float() - theirs(x, timestep=t, encoder_hidden_states=text,
                                                  return_dict=False)[0].float()).abs().max().item()
    tokens = args.frames * (args.size // 2) ** 2
    result = {"config": vars(args), "tokens_per_sample": tokens, "ours_ms": ms_ours, "diffusers_ms": ms_theirs,
              "speedup": ms_theirs / ms_ours, "max_abs_diff": diff}
    print(f"Latte {args.layers}L x {dim} | {tokens} tokens x 2 (CFG) | {args.device} {args.dtype}")
    print(f"{'implementation':<16}{'ms / forward':>14}")
    print(f"{'diffusers':<16}{ms_theirs:>14.1f}")
    print(f"{'videosys':<16}{ms_ours:>14.1f}   ({result['speedup']:.2f}x, max |diff| {diff:.2e})")
    write_json(args.output, result)


if __name__ == "__main__":
    main()
