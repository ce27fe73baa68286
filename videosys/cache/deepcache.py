"""DeepCache (arXiv 2312.00858; the authors' horseee/DeepCache): a UNet's deep features change slowly across steps,
so on most steps reuse them and run only the shallow ends of the U.

At the block-stack hook point of a UNet (hooks.BlockStack.down_units: LaVie's): the stack's units are its down
units (each leaves a skip connection), the mid block and the up units (each takes one back, last first). A full step
runs the whole U and keeps, per branch, the feature entering the up unit that takes skip `branch + 1` (the output of
everything deeper); a cached step runs the first `branch + 1` down units (their skips fresh), then the up units from
there on, starting from the kept feature. The uniform schedule of the paper's 1:N strategy: steps 0, N, 2N, ... are
full (and the family's refresh steps). `branch` orders the down units shallowest first, as the authors'
`cache_branch_id` does (their helper's default 0: the first ResNet / attention layer of the first block).
Decided from the step index alone, so every rank agrees without talking.
"""

from dataclasses import dataclass

import torch

from videosys.cache.hooks import BlockStack, StepCache
from videosys.cache.registry import register


@dataclass
class DeepCacheConfig:
    interval: int = 3  # N: one full step in N (the authors' README / DeepCacheSDHelper.set_params: cache_interval=3)
    branch: int = 0  # the shallow down units run on cached steps, minus one (README: cache_branch_id=0)

    def __post_init__(self):
        if int(self.interval) < 1 or int(self.branch) < 0:
            raise ValueError(f"DeepCache needs interval >= 1 and branch >= 0, got {self.interval}, {self.branch}")
        self.interval, self.branch = int(self.interval), int(self.branch)

    @classmethod
    def for_model(cls, setting: dict | None, **overrides) -> "DeepCacheConfig":
        """A UNet family's entry (its cache_settings.py lists "deepcache"; the fields default to the authors'); a
        family without one has no UNet to cache."""
        if setting is None:
            raise ValueError("DeepCache reuses a UNet's deep features: this model is not a UNet (a UNet family lists "
                             "'deepcache' in its cache_settings.py)")
        return cls(**{**setting, **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None) -> "DeepCacheConfig | None":
        """"deepcache-5": interval 5."""
        return cls.for_model(setting, interval=int(arg)) if arg.isdigit() else None


class DeepCache(StepCache):
    def check_model(self, model) -> None:
        units = getattr(model, "down_units", None)
        if units is None:
            raise ValueError(f"DeepCache needs a UNet's block stack; {type(model).__name__} has none")
        if self.config.branch >= units:
            raise ValueError(f"DeepCache branch={self.config.branch}: this UNet has {units} down units (0 .. "
                             f"{units - 1})")

    def begin(self, timesteps, refresh_steps=()) -> None:
        super().begin(timesteps, refresh_steps)
        self.features: dict[str, torch.Tensor] = {}  # branch -> the deep feature of its last full step

    def stack(self, stack: BlockStack) -> tuple:
        (h,) = stack.streams
        shallow = self.config.branch + 1  # down units run fresh
        resume = stack.num_units - shallow - 1  # the up unit taking skip `shallow` back: where the shallow part resumes
        full = self.step % self.config.interval == 0 or self.step in self.refresh_steps
        if full or stack.branch not in self.features:
            deep = stack.run(h, stop=resume)[0]
            self.features[stack.branch] = deep
            self.computed += 1
        else:
            stack.run(h, stop=shallow)  # the fresh skips
            deep = self.features[stack.branch]
            self.reused_steps.append(self.step)
        return stack.run(deep, start=resume)

    def postfix(self) -> str:
        return f"deep {len(self.reused_steps)}/{self.computed + len(self.reused_steps)} reused"


register("deepcache", DeepCacheConfig, DeepCache, for_model=DeepCacheConfig.for_model, parse=DeepCacheConfig.from_name,
         names=("deepcache",), sweep=("deepcache-2", "deepcache-3", "deepcache-5"), syntax="deepcache-<interval>",
         reuses_last_step=True)  # the uniform schedule forces no last full step
