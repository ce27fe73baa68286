"""FasterCache's parts one at a time on the demo model: PSNR against the uncached video (prints a table, writes JSON).

    python scripts/ablate_fastercache.py [--prompts 8] [--threads 1] [--output docs/fastercache_ablation_demo.json]

Each row changes one setting of `fastercache` (attention every 2nd step for t < 681, uncond every 5th step
for t < 641) or `fastercache-2-3` (uncond every 3rd): the frequency weights (alpha 1.1, the published ones,
or 1.0), diffusers' compounding of them, the extrapolation weight (the ramp, a constant, 0 = plain copy),
and each part alone. Fidelity only (speed: scripts/bench_cache.py); mean PSNR over the demo prompts, seed 0.
"""

import argparse

import numpy as np
import torch

WINDOW = (-1, 641)  # diffusers' uncond window
VARIANTS = {
    "fastercache (published)": {},
    "alpha 1.0": {"alpha_low": 1.0, "alpha_high": 1.0},
    "attention off": {"spatial": None},
    "cfg-cache off": {"uncond": None},
    "2-3": {"uncond": (WINDOW, 3)},
    "2-3, alpha 1.0": {"uncond": (WINDOW, 3), "alpha_low": 1.0, "alpha_high": 1.0},
    "2-3, compound (diffusers)": {"uncond": (WINDOW, 3), "compound": True},
    "2-3, weight 0.5": {"uncond": (WINDOW, 3), "weight": 0.5},
    "2-3, weight 0 (copy)": {"uncond": (WINDOW, 3), "weight": 0.0},
    "2-3, attention off": {"uncond": (WINDOW, 3), "spatial": None},
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
    print(f"{'variant':28s} {'PSNR':>6s}  uncond skipped  attention reused")
    for name, fields in VARIANTS.items():
        pipe.set_cache({"method": "fastercache", **fields})
        psnr, stats = [], {}
        for prompt, ref in zip(prompts, base):
            out = pipe.generate(prompt, seed=0)
            psnr.append(float(np.mean(video_metrics(ref, out.video[0].numpy(), metrics=("psnr",))["psnr"])))
            stats = out.stats["fastercache"]
        row = {"variant": name, "fields": {k: v for k, v in fields.items()}, "psnr": float(np.mean(psnr)),
               "uncond_skipped": stats.get("uncond_skipped", 0), "spatial_reused": stats.get("spatial_reused", 0),
               "spatial_computed": stats.get("spatial_computed", 0)}
        rows.append(row)
        attention = row["spatial_reused"] + row["spatial_computed"]
        print(f"{name:28s} {row['psnr']:6.2f}  {row['uncond_skipped']:>6d}/50       "
              f"{row['spatial_reused']:>4d}/{attention}", flush=True)
    write_json(args.output, {"prompts": len(prompts), "seed": 0, "rows": rows})
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
