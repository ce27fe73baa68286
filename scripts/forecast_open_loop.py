"""Open-loop error of the module forecasters: record every module output of one uncached demo-model run, then
replay TaylorSeer (order 1), FoCa (normalised and cache-dit's raw form) and plain reuse (order 0) on the recorded
sequence; per method and interval, the mean and max relative L2 error of the forecasts against the recorded
truth. Open loop: each forecast sees true features on its full steps, so this isolates the update rule from the
drift a cached run adds.

    python scripts/forecast_open_loop.py --threads 1 --output benchmarks/forecast_open_loop_demo.json
"""

import argparse
from collections import defaultdict
from dataclasses import dataclass

import torch

from videosys.cache.foca import FoCa, FoCaConfig
from videosys.cache.hooks import Cache
from videosys.cache.registry import register
from videosys.cache.taylorseer import TaylorSeer, TaylorSeerConfig
from videosys.utils.files import write_json


@dataclass
class RecordConfig:
    pass


class Record(Cache):
    """Keeps every module output by site and step (an observer: it replaces nothing)."""

    def __init__(self, config):
        self.config = config
        self.begin([])

    @classmethod
    def acts_at(cls, config):
        return frozenset()

    def begin(self, timesteps, refresh_steps=()):
        self.step, self.outputs = 0, defaultdict(dict)

    def set_step(self, index, timestep):
        self.step = index

    def module(self, site, compute):
        out = compute()
        self.outputs[site][self.step] = out.detach().clone()
        return out


def methods(interval: int) -> dict:
    return {"taylorseer": (TaylorSeer, TaylorSeerConfig(interval=interval)),
            "foca": (FoCa, FoCaConfig(interval=interval)),
            "foca-raw": (FoCa, FoCaConfig(interval=interval, normalise=False)),
            "reuse": (TaylorSeer, TaylorSeerConfig(interval=interval, max_order=0))}


def replay(cls, config, outputs: dict, steps: int) -> list[float]:
    """Relative L2 errors of every forecast the method makes on the recorded outputs."""
    cache = cls(config)
    cache.begin([0.0] * steps)
    errors = []
    for i in range(steps):
        cache.set_step(i, 0.0)
        for site, by_step in outputs.items():
            truth = by_step[i].float()
            got = cache.module(site, lambda: truth)
            if got is not truth:
                errors.append(float((got - truth).norm() / truth.norm()))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="a red circle moving to the right")
    parser.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/forecast_open_loop.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from videosys import LatteConfig

    register("record", RecordConfig, Record, for_model=lambda models: RecordConfig())
    config = LatteConfig(preset="demo", progress_bar=False)
    pipe = config.pipeline_cls.from_config(config)
    pipe.set_cache(RecordConfig())
    out = pipe.generate(args.prompt, seed=0)
    outputs, steps = pipe.transformer.active_cache("record").outputs, out.stats["steps"]
    rows = []
    print(f"{'interval':>8}  {'method':<11}{'mean err':>9}{'max err':>9}")
    for interval in args.intervals:
        for name, (cls, cache_config) in methods(interval).items():
            errors = replay(cls, cache_config, outputs, steps)
            rows.append({"interval": interval, "method": name, "forecasts": len(errors),
                         "mean_relative_error": sum(errors) / len(errors), "max_relative_error": max(errors)})
            print(f"{interval:>8}  {name:<11}{rows[-1]['mean_relative_error']:>9.4f}{rows[-1]['max_relative_error']:>9.3f}")
    write_json(args.output, {"prompt": args.prompt, "steps": steps, "modules": len(outputs), "rows": rows})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
