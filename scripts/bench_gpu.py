"""Every family's transformer at its published resolution, random weights: the GPU figures docs/speed.md asks for.

    bash scripts/bench_gpu.sh                 # on a CUDA machine (installs, then runs this)
    python scripts/bench_gpu.py --dry-run     # tiny sizes on CPU in seconds: checks the script, measures nothing
    python scripts/bench_gpu.py --memory      # the memory planner's cases: predicted vs measured peaks per plan

Per family, CFG batch 2 in bf16 (fp32 in the dry run): transformer step ms and peak memory, eager and
compiled (compile=True: models/modules/compile.py), diffusers' model on the same weights where diffusers has it
(Latte, CogVideoX; eager and its compile_repeated_blocks), each cache method's mean step time over a
short schedule against no cache, and sp = 2 / 4 / 8 step times (torchrun, when that many GPUs exist).
Prints one table and writes one JSON.
"""

import argparse
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import time

import torch

from videosys.models.modules.compile import compile_regions
from videosys.utils.files import write_json

# Published shapes: (latent (C, T, H, W) as the family's transformer takes it, text tokens, text width).
# Latte-1: 16 x 512 x 512 (VAE /8), T5 120 tokens; Open-Sora 1.2: 4 s 480p (102 frames -> 30 latents, 480 x 854
# -> 60 x 106), T5 300; Open-Sora-Plan v1.2: 93 x 480p (-> 24 x 60 x 80), mT5 512; CogVideoX-2b: 49 x 480 x 720
# (-> 13 x 60 x 90, (B, F, C, H, W)), T5 226; HunyuanVideo-1.5 480p T2V (opt-in: --families hunyuanvideo-1.5):
# 121 x 480 x 848 (VAE /16, /4 -> 31 x 30 x 53) with 65 input channels (latents, condition, mask), Qwen2.5-VL's
# 1000 text tokens all attended (no mask: the padded upper bound; ByT5 and image tokens left out). Wan (opt-in:
# --families wan-1.3b,wan-14b,wan-ti2v-5b): Wan2.1-T2V-1.3B / -14B at 81 x 480 x 832 (VAE /8, /4 -> 21 x 60 x 104),
# Wan2.2-TI2V-5B at 121 x 704 x 1280 (VAE /16, /4 -> 31 x 44 x 80, 48 channels); UMT5 512 x 4096.
WAN = {"wan-1.3b": {}, "wan-14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40),
       "wan-ti2v-5b": dict(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48)}
PUBLISHED = {"latte": ((4, 16, 64, 64), 120, 4096), "open-sora": ((4, 30, 60, 106), 300, 4096),
             "open-sora-plan": ((4, 24, 60, 80), 512, 4096), "cogvideox": ((16, 13, 60, 90), 226, 4096),
             "hunyuanvideo-1.5": ((65, 31, 30, 53), 1000, 3584), "wan-1.3b": ((16, 21, 60, 104), 512, 4096),
             "wan-14b": ((16, 21, 60, 104), 512, 4096), "wan-ti2v-5b": ((48, 31, 44, 80), 512, 4096)}
DRY = {"latte": ((4, 4, 8, 8), 6, 24), "open-sora": ((4, 2, 8, 8), 6, 24), "open-sora-plan": ((4, 2, 8, 8), 6, 24),
       "cogvideox": ((4, 2, 8, 8), 6, 24), "hunyuanvideo-1.5": ((9, 2, 4, 4), 6, 24),
       **{name: ((48 if "ti2v" in name else 16, 2, 8, 8), 6, 24) for name in WAN}}


def build(family: str, dry: bool):
    """(ours, diffusers' or None, call(model, x, t, text), config class) at the published or a tiny size."""
    from videosys.models.cogvideox.pipeline import CogVideoXConfig
    from videosys.models.latte.pipeline import LatteConfig
    from videosys.models.open_sora.pipeline import OpenSoraConfig
    from videosys.models.open_sora_plan.pipeline import OpenSoraPlanConfig

    small = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2)
    if family == "latte":
        from diffusers import LatteTransformer3DModel as Theirs

        from videosys.models.latte.transformer import LatteTransformer3DModel as Ours, LatteTransformerConfig as C
        cfg = C(**small, cross_attention_dim=32, caption_channels=24, sample_size=8, video_length=4) if dry else C()
        theirs = Theirs(**cfg.diffusers_kwargs())  # diffusers' Latte has no skip_connections field
        return Ours(cfg), theirs, lambda m, x, t, y: m(x, t, y), LatteConfig
    if family == "cogvideox":
        from diffusers import CogVideoXTransformer3DModel as Theirs

        from videosys.models.cogvideox.transformer import CogVideoXTransformer3DModel as Ours
        from videosys.models.cogvideox.transformer import CogVideoXTransformerConfig as C
        cfg = C(**small, in_channels=4, out_channels=4, text_embed_dim=24, time_embed_dim=24, sample_height=8,
                sample_width=8, sample_frames=5, max_text_seq_length=6) if dry else C()
        theirs = Theirs(**dataclasses.asdict(cfg))
        return Ours(cfg), theirs, lambda m, x, t, y: m(x.transpose(1, 2), y, t).transpose(1, 2), CogVideoXConfig
    if family == "hunyuanvideo-1.5":
        from videosys.models.hunyuanvideo15.pipeline import HunyuanVideo15Config
        from videosys.models.hunyuanvideo15.transformer import HunyuanVideo15Transformer3DModel as Ours
        from videosys.models.hunyuanvideo15.transformer import HunyuanVideo15TransformerConfig as C
        cfg = C(**small, in_channels=9, out_channels=4, text_embed_dim=24, rope_axes_dim=(4, 6, 6)) if dry else C()
        return Ours(cfg), None, lambda m, x, t, y: m(x, t, y), HunyuanVideo15Config
    if family in WAN:
        from diffusers import WanTransformer3DModel as Theirs

        from videosys.models.wan.pipeline import WanConfig
        from videosys.models.wan.transformer import WanTransformer3DModel as Ours, WanTransformerConfig as C
        channels = WAN[family].get("in_channels", 16)
        cfg = C(**small, ffn_dim=64, text_dim=24, freq_dim=32, in_channels=channels, out_channels=channels) if dry \
            else C(**WAN[family])
        theirs = Theirs(**dataclasses.asdict(cfg))
        return Ours(cfg), theirs, lambda m, x, t, y: m(x, t, y), WanConfig
    if family == "open-sora":
        from videosys.models.open_sora.transformer import STDiT3, STDiT3Config as C
        cfg = C(depth=2, hidden_size=32, num_heads=2, caption_channels=24, model_max_length=6) if dry else C()
        size = (64, 64) if dry else (480, 854)
        return STDiT3(cfg), None, lambda m, x, t, y: m(x, t, y, height=size[0], width=size[1], fps=24), OpenSoraConfig
    from videosys.models.open_sora_plan.transformer import OpenSoraT2V, OpenSoraT2VConfig as C
    cfg = C(**{**small, "attention_head_dim": 12}, cross_attention_dim=24, caption_channels=24,
            sample_size=[8, 8]) if dry else C()
    return OpenSoraT2V(cfg), None, lambda m, x, t, y: m(x, t, y), OpenSoraPlanConfig


def step_ms(fn, device, repeats: int) -> float:
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device, fn) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    return torch.cuda.max_memory_allocated(device) / 2**30


def cache_step_ms(model, call, x, t, y, spec, config_cls, steps: int, device) -> float:
    """Mean ms per step over a `steps`-step schedule (1000 -> 0) with cache `spec` on (None: no cache)."""
    from videosys.cache import configs_from_spec

    model.disable_cache()
    for c in configs_from_spec(spec, config_cls(preset="tiny").published_cache_settings()) if spec else []:
        model.enable_cache(c)
    timesteps = torch.linspace(999, 0, steps)
    model.cache_begin([float(v) for v in timesteps])
    sync(device)
    start = time.perf_counter()
    for i, ts in enumerate(timesteps):
        model.cache_step(i, float(ts))
        call(model, x, torch.full((x.shape[0],), float(ts), device=device), y)
    sync(device)
    model.disable_cache()
    return (time.perf_counter() - start) * 1000 / steps


def bench_family(family: str, args, device, dtype) -> dict:
    from videosys.cache import choices

    ours, theirs, call, config_cls = build(family, args.dry_run)
    if theirs is not None:
        ours.load_state_dict(theirs.state_dict())
        theirs = theirs.to(device, dtype).eval()
    ours = ours.to(device, dtype).eval()
    (c, f, h, w), tokens, text_dim = (DRY if args.dry_run else PUBLISHED)[family]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, f, h, w, generator=g).to(device, dtype)
    y = torch.randn(2, tokens, text_dim, generator=g).to(device, dtype)
    t = torch.tensor([500.0, 500.0], device=device)
    row = {"family": family, "latent": [2, c, f, h, w], "text_tokens": tokens, "ms": {}, "peak_gib": {}}
    with torch.inference_mode():
        variants = {"ours eager": lambda: call(ours, x, t, y)}
        if theirs is not None:
            variants["diffusers eager"] = lambda: theirs(x if family == "latte" or family in WAN else x.transpose(1, 2),
                                                         timestep=t, encoder_hidden_states=y, return_dict=False)
        for name, fn in variants.items():
            row["ms"][name] = step_ms(fn, device, args.repeats)
            row["peak_gib"][name] = peak_gib(device, fn)
        if theirs is not None:  # the same maths: ours against diffusers on the same weights
            expected = variants["diffusers eager"]()[0].float()
            expected = expected.transpose(1, 2) if family == "cogvideox" else expected  # (B, C, F, H, W)
            diff = variants["ours eager"]().float() - expected
            row["max_abs_diff_vs_diffusers"] = diff.abs().max().item()
        row["caches"] = {}
        base = cache_step_ms(ours, call, x, t, y, None, config_cls, args.cache_steps, device)
        for name in choices():
            if name == "none":
                continue
            try:
                ms = cache_step_ms(ours, call, x, t, y, name, config_cls, args.cache_steps, device)
            except (ValueError, KeyError) as e:  # a method without published settings for this family
                row["caches"][name] = {"error": str(e)[:120]}
                continue
            row["caches"][name] = {"step_ms": ms, "speedup": base / ms}
        row["caches"]["none"] = {"step_ms": base, "speedup": 1.0}
        if args.compile:
            compile_regions(ours)
            row["ms"]["ours compiled"] = step_ms(lambda: call(ours, x, t, y), device, args.repeats)
            if theirs is not None:
                if hasattr(theirs, "compile_repeated_blocks") and getattr(theirs, "_repeated_blocks", None):
                    theirs.compile_repeated_blocks()
                else:
                    theirs = torch.compile(theirs)
                row["ms"]["diffusers compiled"] = step_ms(variants["diffusers eager"], device, args.repeats)
    return row


def sp_worker(args) -> None:
    """One rank of a torchrun job: each family's eager step at sp = world size; rank 0 writes its JSON."""
    import torch.distributed as dist

    from videosys.core.parallel import init_parallel

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device(f"cuda:{rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    state = init_parallel(False, device.type)
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    out = {}
    for family in args.families.split(","):
        torch.manual_seed(0)
        ours, _, call, _ = build(family, args.dry_run)
        ours = ours.to(device, dtype).eval()
        ours.set_parallel(state)
        (c, f, h, w), tokens, text_dim = (DRY if args.dry_run else PUBLISHED)[family]
        x, y = torch.randn(2, c, f, h, w, device=device, dtype=dtype), torch.randn(2, tokens, text_dim,
                                                                                   device=device, dtype=dtype)
        t = torch.tensor([500.0, 500.0], device=device)
        with torch.inference_mode():
            out[family] = step_ms(lambda: call(ours, x, t, y), device, args.repeats)
        del ours
    if rank == 0:
        write_json(args.output, out)
    dist.destroy_process_group()


def sp_scaling(args, gpus: int) -> dict:
    """sp -> {family: ms} for sp = 2, 4, 8 up to the GPUs present (each a torchrun job)."""
    results = {}
    for sp in [n for n in args.sp if n <= gpus]:
        out = f"{args.output}.sp{sp}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={sp}", __file__, "--sp-worker",
               "--families", args.families, "--repeats", str(args.repeats), "--output", out]
        cmd += ["--dry-run"] if args.dry_run else []
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.sp_timeout)
        if proc.returncode:
            results[sp] = {"error": proc.stderr[-400:]}
            continue
        import json

        with open(out) as fh:
            results[sp] = json.load(fh)
    return results


# --memory: (label, family, config fields, budget): the planner's goal cases (docs/memory.md), each run with the
# plan the planner picks for the budget; the dry run uses the tiny presets
MEMORY_CASES = [("wan-1.3b", "wan", {}, "8GB"),
                ("wan-14b", "wan", {"kind": "t2v-14B", "model_path": "Wan-AI/Wan2.1-T2V-14B-Diffusers"}, "24GB"),
                ("cogvideox-5b", "cogvideox", {"model_path": "THUDM/CogVideoX-5b"}, "24GB"),
                ("latte", "latte", {}, "80GB")]


def random_pipeline(config, device, dry: bool):
    """The family's pipeline at full size with random weights (no checkpoint): the parts built on the meta device
    (`architecture`), given storage where the plan keeps them and filled with small normal values."""
    if dry:
        return config.pipeline_cls.from_config(config)
    with torch.device("meta"):
        parts = config.pipeline_cls.architecture(config)
    dtype = config.torch_dtype()
    for name, part in parts.items():
        if isinstance(part, torch.nn.Module):
            home = device if config.offload == "none" else torch.device("cpu")
            part.to(dtype=dtype).to_empty(device=home)
            with torch.no_grad():
                for p in part.parameters():
                    p.normal_(0, 0.02)
    return config.pipeline_cls.from_config(config, parts=parts)


def bench_memory(args, device) -> list[dict]:
    """Each goal case: the planner's per-stage prediction and plan, then a 2-step generation with that plan, its
    per-stage peak (torch.cuda.max_memory_allocated, reset at each stage) and time."""
    from videosys.core import planner
    from videosys.core.offload import apply_memory_settings
    from videosys.models import config_class

    rows = []
    for label, family, fields, budget in MEMORY_CASES:
        fields = {"preset": "tiny"} if args.dry_run else fields
        config = config_class(family)(progress_bar=False, num_inference_steps=2, **fields)
        choice = planner.choose(config, budget=planner.parse_bytes(budget))
        row = {"case": label, "budget": budget, "plan": choice.plan.describe() if choice.plan else None,
               "predicted_gib": {}, "measured_gib": {}}
        if choice.plan is None:
            rows.append({**row, "error": choice.refusal()})
            continue
        for stage, (w, a) in planner.stage_peaks(choice.measurement, choice.plan).items():
            row["predicted_gib"][stage] = (w + a) / 2**30
        config = planner.plan_config(config, choice.plan)
        pipeline = None
        try:
            pipeline = apply_memory_settings(random_pipeline(config, device, args.dry_run))
            pipeline.check_finite = lambda latents: None  # random weights: the values do not matter here

            @contextlib.contextmanager
            def stage_peak(name):
                sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                yield
                sync(device)
                if device.type == "cuda":
                    row["measured_gib"][name] = torch.cuda.max_memory_allocated(device) / 2**30

            pipeline.stage_hooks.append(stage_peak)
            start = time.perf_counter()
            pipeline.generate("a red circle moving to the right")
            row["seconds_2_steps"] = time.perf_counter() - start
        except torch.OutOfMemoryError as err:
            row["error"] = f"out of memory: {err}"
        rows.append(row)
        del pipeline
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"{label:<14}{budget:>6}  {row['plan']}: " + ", ".join(
            f"{s} {row['predicted_gib'][s]:.2f} / {row['measured_gib'].get(s, float('nan')):.2f}"
            for s in row["predicted_gib"]) + " GiB (predicted / measured)", flush=True)
    return rows


def table(rows: list[dict], sp: dict) -> str:
    lines = [f"{'family':<16}{'variant':<20}{'ms / step':>11}{'peak GiB':>10}"]
    for r in rows:
        for name, ms in r["ms"].items():
            peak = r["peak_gib"].get(name)
            lines.append(f"{r['family']:<16}{name:<20}{ms:>11.1f}{peak if peak is None else round(peak, 2)!s:>10}")
        speedups = ", ".join(f"{k} {v['speedup']:.2f}x" for k, v in r["caches"].items() if "speedup" in v)
        lines.append(f"{'':<16}caches: {speedups}")
    for n, fams in sp.items():
        lines.append(f"sp={n}: " + (", ".join(f"{k} {v:.1f} ms" for k, v in fams.items())
                                   if "error" not in fams else fams["error"]))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, fp32, CPU allowed: a check of the script")
    parser.add_argument("--families", default="latte,open-sora,open-sora-plan,cogvideox")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-steps", type=int, default=10, help="schedule length of each cache's timing")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--sp", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--sp-timeout", type=int, default=300)
    parser.add_argument("--sp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="outputs/bench_gpu.json")
    parser.add_argument("--memory", action="store_true", help="the memory planner's goal cases instead: predicted "
                        "and measured per-stage peaks and the time of each plan (docs/memory.md)")
    args = parser.parse_args(argv)
    bad = [f for f in args.families.split(",") if f not in PUBLISHED]
    if bad:
        parser.error(f"unknown families {bad}; choose from {sorted(PUBLISHED)}")
    if args.sp_worker:
        return sp_worker(args)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        parser.error("no CUDA device: run with --dry-run to check the script on CPU")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    report = {"device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(dtype), "dry_run": args.dry_run,
              "torch": torch.__version__, "families": [], "sp_scaling": {}, "complete": False}
    if args.memory:
        report["memory"] = bench_memory(args, device)
        write_json(args.output, {**report, "complete": True, "load_average": os.getloadavg()})
        return
    for family in args.families.split(","):  # the JSON after each family: a run stopped early keeps its figures
        report["families"].append(bench_family(family, args, device, dtype))
        write_json(args.output, {**report, "load_average": os.getloadavg()})
    gpus = torch.cuda.device_count() if cuda else (max(args.sp, default=0) if args.dry_run else 0)  # dry: gloo
    report["sp_scaling"] = sp_scaling(args, gpus) if args.sp else {}
    print(table(report["families"], report["sp_scaling"]))
    write_json(args.output, {**report, "complete": True, "load_average": os.getloadavg()})


if __name__ == "__main__":
    main()
