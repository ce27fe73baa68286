"""Our transformers vs diffusers' on the same weights and inputs: eager and compiled, interleaved.

    python scripts/bench_vs_diffusers.py                                  # Latte + CogVideoX, two CPU sizes
    python scripts/bench_vs_diffusers.py --families latte --sizes small --no-compile
    python scripts/bench_vs_diffusers.py --device cuda --dtype bf16

Five variants per case: ours eager, ours compiled (compile=True, no cache: the whole forward compiled),
ours compiled blocks (compile=True's path while a stack cache such as TeaCache is on: each block's
residual stream compiled, the forward around them eager), diffusers eager, diffusers compiled
(torch.compile of the whole model). Each times a transformer forward on a CFG batch of 2 with the
same text every call, as the steps of one generation (ours eager and blocks project the text's keys
and values once: text_memo.py; compiled whole, it is computed in the graph). Compile time is spent in the warm-up,
outside the timing. Prints one table (median ms; each ratio against diffusers eager / compiled)
and writes JSON.

Each case runs in a fresh process (as a user's generation does): on CPU the ratios depend on the allocator's
state, which a case run before leaves behind (CogVideoX at the issue size measured 0.76x of diffusers eager on
its own and 0.87x after the Latte cases in the same process: glibc's mmap threshold had risen to 32 MB, and
diffusers' eager temporaries then reuse heap memory). `--one-process` runs them all in this one.
"""

import argparse
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from videosys.models.modules.compile import compile_regions
from videosys.models.modules.inductor_passes import CPURewrites
from videosys.utils.files import write_json

# (layers, heads, head_dim, frames, latent size, text tokens); "issue": the sizes of the speed target in docs/speed.md
SIZES = {"small": (2, 4, 32, 8, 16, 20), "issue": (4, 8, 32, 16, 32, 32)}


def seeded_(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight drawn (none left at zero init, so no branch is trivially skipped)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def latte_case(size, device, dtype):
    from diffusers import LatteTransformer3DModel as Theirs

    from videosys.models.latte.transformer import LatteTransformer3DModel, LatteTransformerConfig

    layers, heads, head_dim, frames, res, tokens = size
    dim = heads * head_dim
    config = LatteTransformerConfig(num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
                                    cross_attention_dim=dim, caption_channels=dim, sample_size=res,
                                    video_length=frames)
    theirs = Theirs(**config.diffusers_kwargs())
    seeded_(theirs)
    models = [LatteTransformer3DModel(config) for _ in range(3)] + [theirs]
    for m in models[:3]:
        m.load_state_dict(theirs.state_dict())
    models = [m.to(device, dtype).eval() for m in models]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, frames, res, res, generator=g).to(device, dtype)
    text = torch.randn(2, tokens, dim, generator=g).to(device, dtype)
    t = torch.tensor([500, 500], device=device)
    ours = lambda m: (lambda: m(x, t, text))  # noqa: E731
    theirs_fn = lambda m: (lambda: m(x, timestep=t, encoder_hidden_states=text, return_dict=False)[0])  # noqa: E731
    desc = f"{layers}L x {dim}, {frames}x{res}x{res} latents ({frames * (res // 2) ** 2} tokens), {tokens} text"
    return models, ours, theirs_fn, desc


def cogvideox_case(size, device, dtype):
    from diffusers import CogVideoXTransformer3DModel as Theirs

    from videosys.models.cogvideox.transformer import CogVideoXTransformer3DModel, CogVideoXTransformerConfig

    layers, heads, head_dim, frames, res, tokens = size
    frames = max(frames // 4, 1)  # CogVideoX's VAE compresses time 4x: fewer latent frames for the same clip
    config = CogVideoXTransformerConfig(num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
                                        in_channels=4, out_channels=4, text_embed_dim=64, time_embed_dim=64,
                                        sample_height=res, sample_width=res, sample_frames=4 * (frames - 1) + 1,
                                        max_text_seq_length=tokens)
    theirs = Theirs(**dataclasses.asdict(config))
    seeded_(theirs)
    models = [CogVideoXTransformer3DModel(config) for _ in range(3)] + [theirs]
    for m in models[:3]:
        m.load_state_dict(theirs.state_dict())
    models = [m.to(device, dtype).eval() for m in models]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, frames, 4, res, res, generator=g).to(device, dtype)
    text = torch.randn(2, tokens, 64, generator=g).to(device, dtype)
    t = torch.tensor([500, 500], device=device)
    ours = lambda m: (lambda: m(x, text, t))  # noqa: E731
    theirs_fn = lambda m: (lambda: m(x, encoder_hidden_states=text, timestep=t, return_dict=False)[0])  # noqa: E731
    desc = f"{layers}L x {heads * head_dim}, {frames}x{res}x{res} latents ({frames * (res // 2) ** 2} tokens), {tokens} text"
    return models, ours, theirs_fn, desc


CASES = {"latte": latte_case, "cogvideox": cogvideox_case}


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, device, repeats: int) -> dict:
    """Median ms per call of each function, calls interleaved so drifts in machine load hit all alike."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def run_case(family: str, size_name: str, args, device, dtype) -> dict:
    models, ours, theirs, desc = CASES[family](SIZES[size_name], device, dtype)
    ours_eager, ours_compiled, ours_blocks, theirs_eager = models
    fns = {"ours eager": ours(ours_eager), "diffusers eager": theirs(theirs_eager)}
    if args.compile:
        compile_regions(ours_compiled)
        compile_regions(ours_blocks)
        del ours_blocks.forward  # the forward eager, as while a stack cache is on (models/modules/compile.py)
        fns["ours compiled"] = ours(ours_compiled)
        fns["ours compiled blocks"] = ours(ours_blocks)
        fns["diffusers compiled"] = theirs(torch.compile(theirs_eager))
        if args.ablate_rewrites:  # the whole forward compiled as compile=True does, with fewer CPU rewrites
            for label, only in (("no CPU rewrites", ()), ("GELU rewrite only", ("gelu",)),
                                ("bias rewrite only", ("bias",))):
                model = copy.deepcopy(ours_eager)
                model.forward = torch.compile(model.forward, dynamic=False,
                                              options={"post_grad_custom_post_pass": CPURewrites(only)})
                fns[f"ours compiled, {label}"] = ours(model)
    compile_s, outputs = {}, {}
    with torch.inference_mode():
        for name, fn in fns.items():  # warm-up: compiles here
            start = time.perf_counter()
            outputs[name] = fn().float()
            fn()
            compile_s[name] = time.perf_counter() - start
        ms = interleaved(fns, device, args.repeats)
    ref = outputs["diffusers eager"]
    diffs = {name: (out - ref).abs().max().item() for name, out in outputs.items()}
    return {"family": family, "size": size_name, "desc": desc, "ms": ms, "warmup_s": compile_s,
            "max_abs_diff_vs_diffusers_eager": diffs}


def case_in_fresh_process(family: str, size: str, argv: list[str]) -> dict:
    """One case run by this script in a child process (--families / --sizes / --output replaced)."""
    drop = {"--families", "--sizes", "--output"}
    kept = [a for i, a in enumerate(argv)
            if a.split("=")[0] not in drop and (i == 0 or argv[i - 1] not in drop)]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "case.json")
        subprocess.run([sys.executable, os.path.abspath(__file__), *kept, "--families", family, "--sizes", size,
                        "--output", out], check=True, stdout=subprocess.DEVNULL)
        with open(out, encoding="utf-8") as f:
            return json.load(f)["results"][0]


def table(results: list[dict], header: str) -> str:
    lines = [header,
             f"{'case':<22}{'variant':<36}{'ms':>10}{'/ diff eager':>14}{'/ diff compiled':>17}{'max|diff|':>11}"]
    for r in results:
        for name, ms in r["ms"].items():
            eager = ms / r["ms"]["diffusers eager"]
            comp = f"{ms / r['ms']['diffusers compiled']:.3f}" if "diffusers compiled" in r["ms"] else "-"
            lines.append(f"{r['family'] + ' ' + r['size']:<22}{name:<36}{ms:>10.1f}{eager:>14.3f}{comp:>17}"
                         f"{r['max_abs_diff_vs_diffusers_eager'][name]:>11.1e}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="latte,cogvideox")
    parser.add_argument("--sizes", default="small,issue", help=f"from {sorted(SIZES)}")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="eager variants only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--ablate-rewrites", action="store_true",
                        help="also ours compiled with none / one of the CPU graph rewrites "
                             "(models/modules/inductor_passes.py)")
    parser.add_argument("--one-process", action="store_true", help="every case in this process, one after another")
    parser.add_argument("--output", default="outputs/bench_vs_diffusers.json")
    args = parser.parse_args(argv)
    families, sizes = args.families.split(","), args.sizes.split(",")
    bad = [f for f in families if f not in CASES] + [s for s in sizes if s not in SIZES]
    if bad:
        parser.error(f"unknown family or size: {bad}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cases = [(f, s) for f in families for s in sizes]
    if args.one_process or len(cases) == 1:
        results = [run_case(f, s, args, device, dtype) for f, s in cases]
    else:
        results = [case_in_fresh_process(f, s, argv if argv is not None else sys.argv[1:]) for f, s in cases]
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    header = (f"{args.device} {args.dtype}, {torch.get_num_threads()} threads, CFG batch 2, median of {args.repeats}"
              f" interleaved; load average {load and round(load[0], 2)} -> {load_after and round(load_after[0], 2)}")
    print(table(results, header))
    for r in results:
        print(f"  {r['family']} {r['size']}: {r['desc']}")
    write_json(args.output, {"config": vars(args), "load_average": [load, load_after], "torch": torch.__version__,
                             "results": results})


if __name__ == "__main__":
    main()
