"""VBench scores of one folder of `{prompt}-{seed}.mp4` videos, one dimension at a time.

Runs in the VBench environment (vbench 0.1.5 pins transformers 4.33 and numpy < 2), made by
`bash vbench/setup_env.sh`:

    vbench/.venv/bin/python vbench/run_vbench.py \
        --video-dir samples/latte/baseline --output-dir vbench_results/latte/baseline

Standard mode over VBench_full_info.json, imaging quality preprocessed "longer" (the papers'
protocol). Each dimension writes `<output-dir>/<dimension>_eval_results.json`; a dimension
already there is skipped, so an interrupted run resumes. A dimension whose model weights are
not in VBench's cache ($VBENCH_CACHE_DIR, default ~/.cache/vbench) is skipped with a note
unless --download lets vbench fetch them. temporal_flickering needs no weights.
Then: `python vbench/cal_vbench.py --score-dir <output-dir>`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cal_vbench import DIMENSIONS  # noqa: E402

IMAGING_QUALITY_MODE = "longer"  # the papers' setting (the TeaCache / PAB papers' VBench setting; docs/evaluation.md)


def vbench_cache_dir() -> str:
    return os.environ.get("VBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vbench")


def required_files(dimension: str) -> list[str]:
    """The weights vbench 0.1.5 (local mode) loads from its cache for a dimension."""
    c = vbench_cache_dir()
    clip_b, clip_l = f"{c}/clip_model/ViT-B-32.pt", f"{c}/clip_model/ViT-L-14.pt"
    grit = [f"{c}/grit_model/grit_b_densecap_objectdet.pth"]
    viclip = [f"{c}/ViCLIP/ViClip-InternVid-10M-FLT.pth"]
    return {
        "subject_consistency": [f"{c}/dino_model/facebookresearch_dino_main/hubconf.py",
                                f"{c}/dino_model/dino_vitbase16_pretrain.pth"],
        "background_consistency": [clip_b],
        "temporal_flickering": [],
        "motion_smoothness": [f"{c}/amt_model/amt-s.pth"],
        "dynamic_degree": [f"{c}/raft_model/models/raft-things.pth"],
        "aesthetic_quality": [clip_l, f"{c}/aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"],
        "imaging_quality": [f"{c}/pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"],
        "object_class": grit, "multiple_objects": grit, "color": grit, "spatial_relationship": grit,
        "human_action": [f"{c}/umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth"],
        "scene": [f"{c}/caption_model/tag2text_swin_14m.pth"],
        "appearance_style": [clip_b],
        "temporal_style": viclip, "overall_consistency": viclip,
    }[dimension]


def full_info_path() -> str:
    spec = importlib.util.find_spec("vbench")
    if spec is None:
        raise SystemExit("vbench is not installed in this Python: run `bash vbench/setup_env.sh` and use "
                         "vbench/.venv/bin/python")
    return os.path.join(list(spec.submodule_search_locations)[0], "VBench_full_info.json")


def result_path(output_dir: str, dimension: str) -> str:
    return os.path.join(output_dir, f"{dimension}_eval_results.json")


def done_before(path: str, dimension: str) -> bool:
    """A readable result for the dimension (vbench writes in place: a killed write is redone)."""
    try:
        with open(path, encoding="utf-8") as f:
            return dimension in json.load(f)
    except (OSError, ValueError):
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run VBench on a folder of videos, dimension by dimension.")
    # TeaCache's README spells them --video_path / --save_path
    p.add_argument("--video-dir", "--video_dir", "--video_path", required=True, help="folder of {prompt}-{seed}.mp4")
    p.add_argument("--output-dir", "--output_dir", "--save_path", required=True,
                   help="where the per-dimension results go")
    p.add_argument("--dimensions", nargs="+", default=list(DIMENSIONS), choices=DIMENSIONS)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--download", action="store_true", help="let vbench download missing weights (needs the network)")
    p.add_argument("--force", action="store_true", help="recompute dimensions that already have results")
    args = p.parse_args(argv)

    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = full_info_path()
    from vbench import VBench

    os.makedirs(args.output_dir, exist_ok=True)
    bench = VBench(device, info, args.output_dir)
    summary = {}
    for dimension in args.dimensions:
        out = result_path(args.output_dir, dimension)
        if done_before(out, dimension) and not args.force:
            summary[dimension] = "done before"
            continue
        missing = [f for f in required_files(dimension) if not os.path.exists(f)]
        if missing and not args.download:
            summary[dimension] = f"skipped: weights missing ({', '.join(missing)}); --download fetches them"
            print(f"{dimension}: {summary[dimension]}", flush=True)
            continue
        print(f"{dimension}: evaluating", flush=True)
        bench.evaluate(videos_path=args.video_dir, name=dimension, dimension_list=[dimension],
                       local=not args.download, mode="vbench_standard",
                       imaging_quality_preprocessing_mode=IMAGING_QUALITY_MODE)
        with open(out, encoding="utf-8") as f:
            summary[dimension] = json.load(f)[dimension][0]
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
