"""Training-free caches, one file per method, used by every model family.

A transformer inherits CacheMixin: `enable_cache(TeaCacheConfig(...))`, `disable_cache()`
(the diffusers convention). The pipeline calls `cache_begin(timesteps)` once per generation
and `cache_step(i, t)` before each step; the transformer's forward calls the cache objects
at explicit points.
"""

import dataclasses
from functools import partial

from videosys.cache.pab import PAB, PABConfig
from videosys.cache.teacache import TeaCache, TeaCacheConfig, relative_l1

__all__ = ["CacheMixin", "PAB", "PABConfig", "TeaCache", "TeaCacheConfig", "cache_configs_from_spec",
           "pab_variant", "CACHE_CHOICES"]

CACHE_CHOICES = ("none", "teacache-slow", "teacache-fast", "pab")


class CacheMixin:
    teacache: TeaCache | None = None
    pab: PAB | None = None

    def enable_cache(self, config) -> None:
        if isinstance(config, TeaCacheConfig):
            self.teacache = TeaCache(config)
        elif isinstance(config, PABConfig):
            self.pab = PAB(config)
        else:
            raise TypeError(f"enable_cache takes a TeaCacheConfig or PABConfig, got {type(config).__name__}")

    def disable_cache(self) -> None:
        self.teacache = None
        self.pab = None

    def teacache_blocks(self, indicator, blocks, *streams):
        """`blocks(*streams)`, or, when TeaCache decides this step can reuse, the streams plus the
        residuals the blocks added last time. `indicator()` is the model's published indicator; it
        is only computed with TeaCache on. Its distance sums over every rank (`self.parallel`), so
        all ranks take the decision a single process would take on the whole batch."""
        teacache = self.teacache
        if teacache is None:
            return blocks(*streams)
        if teacache.skip(indicator(), distance=partial(relative_l1, group=self.parallel.world_group)):
            return teacache.apply_cached(*streams)
        out = blocks(*streams)
        teacache.store(streams if len(streams) > 1 else streams[0], out)
        return out

    def _caches(self):
        return [c for c in (self.teacache, self.pab) if c is not None]

    def cache_begin(self, timesteps: list[float], refresh_steps=()) -> None:
        """A new generation; on `refresh_steps` every cache computes (some frames' timestep jumps there)."""
        for cache in self._caches():
            cache.begin(timesteps, refresh_steps=tuple(refresh_steps))

    def cache_step(self, index: int, timestep: float) -> None:
        for cache in self._caches():
            cache.set_step(index, timestep)

    def cache_stats(self) -> dict:
        out = {}
        if self.teacache is not None:
            out["teacache"] = self.teacache.stats()
        if self.pab is not None:
            out["pab"] = self.pab.stats()
        return out

    def cache_postfix(self) -> str:
        return ", ".join(c.postfix() for c in self._caches())


def cache_configs_from_spec(spec, teacache_model: str, pab_model: str) -> list:
    """Cache configs from a name ("teacache-slow", "teacache-fast", "teacache-0.15", "pab", "pab-357", "none"),
    a dict with a "method" key, a config object, or a list of these."""
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return [c for s in spec for c in cache_configs_from_spec(s, teacache_model, pab_model)]
    if isinstance(spec, (TeaCacheConfig, PABConfig)):
        return [spec]
    if isinstance(spec, dict):
        values = dict(spec)
        method = values.pop("method", None)
        if method == "teacache":
            base = TeaCacheConfig.for_model(teacache_model)
            return [dataclasses.replace(base, **values)]
        if method == "pab":
            return [PABConfig.for_model(pab_model, **values)]
        raise ValueError(f"cache dict needs method 'teacache' or 'pab', got {method!r}")
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name in ("", "none"):
            return []
        if name == "pab":
            return [PABConfig.for_model(pab_model)]
        if name.startswith("pab-") and len(name) == 7 and name[4:].isdigit():
            return [pab_variant(pab_model, *(int(c) for c in name[4:]))]
        if name.startswith("teacache"):
            speed = name.partition("-")[2] or "slow"
            try:
                speed = speed if speed in ("slow", "fast") else float(speed)
            except ValueError:
                raise ValueError(f"unknown cache {spec!r}; choose from {CACHE_CHOICES} or teacache-<threshold>")
            return [TeaCacheConfig.for_model(teacache_model, speed)]
    raise ValueError(f"unknown cache {spec!r}; choose from {CACHE_CHOICES}, teacache-<threshold> or pab-<ranges>")


def pab_variant(model: str, spatial: int, temporal: int, cross: int) -> PABConfig:
    """The PAB paper's named variants ("pab-246", "pab-357", "pab-579": spatial / temporal / cross
    ranges) in the model's published windows and MLP table; a kind the model does not broadcast stays off."""
    base = PABConfig.for_model(model)
    ranges = {"spatial": spatial, "temporal": temporal, "cross": cross}
    return dataclasses.replace(base, **{kind: (getattr(base, kind)[0], every) for kind, every in ranges.items()
                                        if getattr(base, kind) is not None})


def cache_spec_to_plain(spec):
    """A YAML-friendly form of a cache spec (config objects become dicts with a "method" key)."""
    if isinstance(spec, (list, tuple)):
        return [cache_spec_to_plain(s) for s in spec]
    if isinstance(spec, TeaCacheConfig):
        return {"method": "teacache", "threshold": spec.threshold, "coefficients": list(spec.coefficients)}
    if isinstance(spec, PABConfig):
        values = dataclasses.asdict(spec)
        return {"method": "pab", **values}
    return spec
