"""Training-free caches: one file per method, one registry, the same hook points in every family.

A method is one file here: a config dataclass with the defaults that hold for any model, a state
object (a `hooks.Cache`) defining the hooks it acts at, and one `registry.register(...)` call. The
published per-model settings belong to the families (videosys/models/<family>/cache_settings.py).
Every module of this package is imported below, so a new file registers itself; its names then
parse everywhere (config `cache=`, `--cache`, YAML, `engine.set_cache`, bench / eval variants).

A transformer inherits CacheMixin: `enable_cache(config)`, `disable_cache()`, `active_cache(name)`.
The pipeline calls `cache_begin(timesteps)` once per generation and `cache_step(i, t)` per step.
"""

import importlib
import pkgutil

from videosys.cache.hooks import BlockStack, Cache, CacheMixin, Site, module_call
from videosys.cache.registry import (METHODS, choices, configs_from_spec, published_names, register, spec_to_plain,
                                     sweep_names)

# every method file registers itself on import (hooks / registry hold no method); the papers' two first, so
# names, menus and variant tables list TeaCache and PAB before the newer methods
for _name in ("teacache", "pab", *sorted(m.name for m in pkgutil.iter_modules(__path__))):
    if _name not in ("hooks", "registry"):
        importlib.import_module(f"{__name__}.{_name}")

from videosys.cache.fastercache import FasterCache, FasterCacheConfig  # noqa: E402
from videosys.cache.pab import PAB, PABConfig  # noqa: E402
from videosys.cache.teacache import TeaCache, TeaCacheConfig, relative_l1  # noqa: E402

__all__ = ["BlockStack", "Cache", "CacheMixin", "FasterCache", "FasterCacheConfig", "METHODS", "PAB", "PABConfig", "Site", "TeaCache", "TeaCacheConfig",
           "choices", "configs_from_spec", "module_call", "published_names", "register", "relative_l1",
           "spec_to_plain", "sweep_names"]
