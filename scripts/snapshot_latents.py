"""Final latents of every family x cache method on the tiny presets: a refactor's bit-for-bit check.

    python scripts/snapshot_latents.py --output before.pt            # on the old code
    python scripts/snapshot_latents.py --compare before.pt           # on the new: every case equal, bit for bit

Each case generates once, single process, with the method's default settings for that family (methods a
family has no published setting for, or cannot run, are recorded as the error they raise, and must raise
the same error type afterwards). Prints a table and exits non-zero when a case differs.
"""

import argparse
import os
import sys

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# name -> (family, config fields, generate kwargs); tiny shapes, 10 steps
CASES = {
    "latte": ("latte", dict(preset="tiny"), dict(num_frames=4)),
    "latte-skip": ("latte", dict(preset="tiny-skip"), dict(num_frames=4)),
    "open-sora": ("open-sora", dict(preset="tiny"), {}),
    "open-sora-plan-v110": ("open-sora-plan", dict(preset="tiny", version="v110"), {}),
    "open-sora-plan-v120": ("open-sora-plan", dict(preset="tiny"), {}),
    "cogvideox-2b": ("cogvideox", dict(preset="tiny"), {}),
    "cogvideox-5b": ("cogvideox", dict(preset="tiny-5b"), {}),
    "cascadev": ("cascadev", dict(preset="tiny"), {}),  # reconstruct() of a demo clip
}
STEPS = 10
# each method's bare name (its published / generic default) plus the papers' legacy switches
EXTRA = ("teacache-fast", "fastercache-diffusers", "forecast-i2", "taylorseer-2", "legacy-teacache", "legacy-pab",
         "magcache-ratios")


def variants() -> list[str]:
    from videosys.cache import METHODS

    return ["none", *sorted(m for m in METHODS if not m.endswith("-recorder")), *EXTRA]


def run_case(family: str, fields: dict, kwargs: dict, variant: str):
    from videosys.models import config_class

    fields = {**fields, "progress_bar": False}
    if family != "cascadev":
        fields["num_inference_steps"] = STEPS
    if variant == "legacy-teacache":
        fields.update(enable_teacache=True, teacache_thresh=0.2)
    elif variant == "legacy-pab":
        fields.update(enable_pab=True)
    elif variant == "magcache-ratios":  # nothing published for these families: a calibration's table
        fields["cache"] = {"method": "magcache", "ratios": [1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.9]}
    else:
        fields["cache"] = variant
    try:
        config = config_class(family)(**fields)
        pipe = config.pipeline_cls.from_config(config)
        if family == "cascadev":
            from videosys.utils.demo_data import make_clip

            clip = make_clip("red", "circle", "right", num_frames=8, height=64, width=64, seed=3)
            out = pipe.reconstruct(clip, num_inference_steps=4)
            return out.video.float() if getattr(out, "latents", None) is None else out.latents
        out = pipe.generate("a red circle moving to the right", seed=3, **kwargs)
    except Exception as err:  # noqa: BLE001 - recorded: the same case must fail the same way afterwards
        return next(c.__name__ for c in type(err).__mro__ if c.__module__ == "builtins")  # ValueError, ...
    return out.latents


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output")
    parser.add_argument("--compare")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    before = torch.load(args.compare) if args.compare else {}
    results, bad = {}, 0
    for case in args.cases:
        family, fields, kwargs = CASES[case]
        for variant in variants():
            key = f"{case}/{variant}"
            results[key] = value = run_case(family, fields, kwargs, variant)
            verdict = ""
            if args.compare:
                old = before.get(key)
                same = (type(old) is type(value) and (old == value if isinstance(value, str)
                                                      else torch.equal(old, value)))
                verdict = "equal" if same else f"DIFFERS (before: {old if isinstance(old, str) else 'latents'})"
                bad += not same
            shown = value if isinstance(value, str) else f"latents {tuple(value.shape)}"
            print(f"{key:48s} {shown:32s} {verdict}", flush=True)
    if args.output:
        torch.save(results, args.output)
    if args.compare:
        print(f"{len(results) - bad} equal, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
