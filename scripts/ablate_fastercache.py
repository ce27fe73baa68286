"""FasterCache's parts one at a time on the demo model: PSNR against the uncached video (prints a table, writes JSON).

    python scripts/ablate_fastercache.py [--prompts 8] [--threads 1] [--output benchmarks/fastercache_ablation_demo.json]

Two bases. `fastercache`, Latte's default: the authors' schedule (attention, spatial and temporal, reused on even
calls >= 16 with weight 0.5; uncond skipped on calls >= 18 not divisible by 5; alpha 1.1, compounding); each
"authors'" row changes one thing. The "paper on diffusers' windows" rows are FasterCacheConfig()'s (attention every
2nd step for t < 681, uncond every 5th for t < 641, the ramp weight, no compounding; `-2-3`: uncond every 3rd)
with one setting changed: the frequency weights, diffusers' compounding, the extrapolation weight, each part
alone. Fidelity only (speed: `videosys bench`); mean PSNR over the demo prompts, seed 0.
"""

import argparse
import dataclasses

import numpy as np
import torch

WINDOW = (-1, 641)  # diffusers' uncond window


def variants() -> dict:
    """name -> the fields set on Latte's default config (the authors')."""
    from videosys.cache.fastercache import DIFFUSERS, FasterCacheConfig

    paper = dataclasses.asdict(FasterCacheConfig())  # every field: replaces the authors' schedule whole
    p23 = {**paper, "uncond": (WINDOW, 3)}
    return {
        "authors' (default)": {},
        "authors', no compounding": {"compound": False},
        "authors', alpha 1.0": {"alpha_low": 1.0, "alpha_high": 1.0},
        "authors', ramp weight": {"weight": None},
        "authors', weight 0 (copy)": {"weight": 0.0},
        "authors', attention only": {"uncond": None},
        "authors', cfg-cache only": {"spatial": None, "temporal": None},
        "authors', spatial only": {"temporal": None, "uncond": None},
        "diffusers' defaults": dict(DIFFUSERS),
        "paper on diffusers' windows": paper,
        "paper, alpha 1.0": {**paper, "alpha_low": 1.0, "alpha_high": 1.0},
        "paper, attention off": {**paper, "spatial": None},
        "paper, cfg-cache off": {**paper, "uncond": None},
        "paper-2-3": p23,
        "paper-2-3, alpha 1.0": {**p23, "alpha_low": 1.0, "alpha_high": 1.0},
        "paper-2-3, compound (diffusers)": {**p23, "compound": True},
        "paper-2-3, weight 0.5": {**p23, "weight": 0.5},
        "paper-2-3, weight 0 (copy)": {**p23, "weight": 0.0},
        "paper-2-3, attention off": {**p23, "spatial": None},
    }


def main(argv=None) -> int:
    from videosys.eval import demo
    from videosys.eval.metrics import video_metrics
    from videosys.models import config_class
    from videosys.utils.files import write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="fastercache_ablation_demo.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = config_class("latte")(preset="demo", progress_bar=False)
    pipe = config.pipeline_cls.from_config(config)
    prompts = demo.prompt_set()[: args.prompts]
    pipe.set_cache(None)
    base = [pipe.generate(prompt, seed=0).video[0].numpy() for prompt in prompts]
    rows = []
    print(f"{'variant':34s} {'PSNR':>6s}  uncond skipped  spatial reused  temporal reused")
    for name, fields in variants().items():
        pipe.set_cache({"method": "fastercache", **fields})
        psnr, stats = [], {}
        for prompt, ref in zip(prompts, base):
            out = pipe.generate(prompt, seed=0)
            psnr.append(float(np.mean(video_metrics(ref, out.video[0].numpy(), metrics=("psnr",))["psnr"])))
            stats = out.stats["fastercache"]
        row = {"variant": name, "fields": {k: v for k, v in fields.items()}, "psnr": float(np.mean(psnr)),
               **{k: stats.get(k, 0) for k in ("uncond_skipped", "uncond_computed", "spatial_reused",
                                                 "spatial_computed", "temporal_reused", "temporal_computed")}}
        rows.append(row)
        steps = row["uncond_skipped"] + row["uncond_computed"]
        spatial, temporal = (row[f"{k}_reused"] + row[f"{k}_computed"] for k in ("spatial", "temporal"))
        print(f"{name:34s} {row['psnr']:6.2f}  {row['uncond_skipped']:>6d}/{steps:<6d}  "
              f"{row['spatial_reused']:>6d}/{spatial:<6d}  {row['temporal_reused']:>6d}/{temporal}", flush=True)
    write_json(args.output, {"prompts": len(prompts), "seed": 0, "rows": rows})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
