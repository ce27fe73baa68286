"""The cache registry: a method registers once and is then reachable by name everywhere.

`register(...)` (one call, at the end of the method's file) makes the method's names parse in the
config field `cache=`, `--cache`, YAML, `engine.set_cache` and the bench / eval variant tables,
and keys its statistics in `out.stats` and the progress bar. Everything here reads `METHODS`.

Family keys. A config names its model for the caches with `cache_models()`, most specific first
(("cogvideox-5b", "cogvideox"), ("open-sora-plan-v110", "open-sora-plan"), ("latte",)); a method
looks up its published defaults under the first key it knows (`published`).
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

NONE_NAMES = ("", "none")


@dataclass(frozen=True)
class CacheMethod:
    name: str  # the spec prefix ("teacache", "teacache-0.2"), the key in out.stats and transformer.caches
    config_cls: type  # a dataclass: the method's settings
    cache_cls: type  # cache_cls(config): the per-transformer state, a videosys.cache.hooks.Cache
    for_model: Callable[[tuple[str, ...]], Any]  # the published config for a model's cache keys
    parse: Callable[[str, tuple[str, ...]], Any] | None = None  # "0.2" of "teacache-0.2" -> config (None: unknown)
    names: tuple[str, ...] = ()  # published operating points ("teacache-slow"): CLI help, eval variants
    sweep: tuple[str, ...] = ()  # what a speed / quality frontier runs (scripts/bench_cache.py)
    syntax: str = ""  # the parametrised form for help and errors, e.g. "teacache-<threshold>"
    # fields a {"method": ...} spec must give for a model with no published setting (TeaCache: "coefficients");
    # empty: such a model's dict spec fails as its name does
    needs: tuple[str, ...] = ()


METHODS: dict[str, CacheMethod] = {}


class OneThreshold:
    """Config mixin of a method with one setting for every family whose name gives a threshold
    ("fbcache-0.1", "easycache-0.05")."""

    @classmethod
    def for_model(cls, models):
        return cls()

    @classmethod
    def from_name(cls, arg: str, models):
        try:
            return cls(threshold=float(arg))
        except ValueError:
            return None


def register(name: str, config_cls: type, cache_cls: type, for_model: Callable, parse: Callable | None = None,
             names=(), sweep=(), syntax: str = "", needs=()) -> CacheMethod:
    """Make a method reachable by name. Registering the same name again replaces it only with the same
    config class (a module imported twice); another class under a taken name is an error."""
    old = METHODS.get(name)
    if old is not None and old.config_cls.__qualname__ != config_cls.__qualname__:
        raise ValueError(f"cache method {name!r} is already registered (by {old.config_cls.__qualname__})")
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{name}: the config must be a dataclass, got {config_cls!r}")
    method = CacheMethod(name, config_cls, cache_cls, for_model, parse, tuple(names), tuple(sweep), syntax,
                         tuple(needs))
    METHODS[name] = method
    cache_cls.method_name = name
    return method


def unregister(name: str) -> None:
    """Forget a method (a test's own, after its tests)."""
    METHODS.pop(name, None)


def published(table: dict, models: tuple[str, ...] | str, what: str):
    """table[key] for the first of the model's cache keys that `table` has."""
    models = (models,) if isinstance(models, str) else tuple(models)
    for key in models:
        if key in table:
            return table[key]
    raise ValueError(f"no published {what} for {models[0] if len(models) == 1 else models}; "
                     f"known: {sorted(table)} (pass the settings explicitly)")


def method_of(config) -> CacheMethod:
    for method in METHODS.values():
        if type(config) is method.config_cls:
            return method
    raise TypeError(f"not a registered cache config: {config!r}; registered: {sorted(METHODS)}")


def choices() -> list[str]:
    """Every name a spec may take: "none", the published ones, then the parametrised forms."""
    out = ["none"]
    for method in METHODS.values():
        out += list(method.names) + ([method.syntax] if method.syntax else [])
    return out


def published_names() -> list[str]:
    """The methods' published operating points ("teacache-slow", "pab", ...): eval variants."""
    return [name for method in METHODS.values() for name in method.names]


def sweep_names() -> list[str]:
    """"none" and every method's frontier variants: the default of scripts/bench_cache.py."""
    return ["none"] + [name for method in METHODS.values() for name in method.sweep]


def _method_for_name(name: str) -> tuple[CacheMethod, str | None]:
    """The method a name belongs to and the argument after "<method>-" (None for the bare name)."""
    best = None
    for method in METHODS.values():
        if name == method.name or name.startswith(method.name + "-"):
            if best is None or len(method.name) > len(best.name):
                best = method
    if best is None:
        raise ValueError(f"unknown cache {name!r}; choose from {', '.join(choices())}")
    return best, (name[len(best.name) + 1:] if name != best.name else None)


def config_from_name(name: str, models: tuple[str, ...]):
    """A config from a name ("teacache-fast", "pab-357", "teacache"), None for "none"."""
    key = name.strip().lower()
    if key in NONE_NAMES:
        return None
    method, arg = _method_for_name(key)
    if arg is None:
        return method.for_model(models)
    config = method.parse(arg, models) if method.parse is not None else None
    if config is None:
        raise ValueError(f"unknown cache {name!r}; choose from {', '.join(choices())}")
    return config


def configs_from_spec(spec, models: tuple[str, ...] | str) -> list:
    """Cache configs from a name ("a+b": both), a dict with a "method" key (the published config with its
    fields replaced), a registered config object, or a list of these; a combination that cannot run together
    (check_combination) is refused here, before anything is enabled."""
    models = (models,) if isinstance(models, str) else tuple(models)
    configs = _configs(spec, models)
    check_combination(configs)
    return configs


def check_combination(configs: list) -> None:
    """Raise unless the methods can be active together: each at most once, and no two acting at the same hook
    point (each would replace what the other computes there: `Cache.acts_at`)."""
    names = [method_of(c).name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"each cache method can be enabled once, got {names}")
    owner = {}
    for name, config in zip(names, configs):
        for point in sorted(method_of(config).cache_cls.acts_at(config)):
            if point in owner:
                raise ValueError(f"cache methods {owner[point]} and {name} both act at the {point!r} hook point; "
                                 "combine methods that act at different points (stack, module, cfg, step_output), "
                                 "e.g. taylorseer-3+fastercache-cfg")
            owner[point] = name


def _configs(spec, models: tuple[str, ...]) -> list:
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return [c for s in spec for c in _configs(s, models)]
    if isinstance(spec, str) and "+" in spec:
        return _configs(spec.split("+"), models)
    if isinstance(spec, str):
        config = config_from_name(spec, models)
        return [] if config is None else [config]
    if isinstance(spec, dict):
        values = dict(spec)
        name = values.pop("method", None)
        if name not in METHODS:
            raise ValueError(f"a cache dict needs a registered 'method' ({', '.join(sorted(METHODS))}), got {name!r}")
        method = METHODS[name]
        try:
            base = method.for_model(models)
        except ValueError as err:  # nothing published for this model: the dict's own settings, if it gives them
            missing = [f for f in method.needs if f not in values]
            if not method.needs:
                raise
            if missing:
                raise ValueError(f"{err}; a {{'method': '{name}', ...}} spec for it must give "
                                 f"{', '.join(missing)}") from None
            return [method.config_cls(**values)]
        return [dataclasses.replace(base, **values)]
    if not any(type(spec) is m.config_cls for m in METHODS.values()):
        raise ValueError(f"unknown cache {spec!r}; choose from {', '.join(choices())} or a registered config")
    method = method_of(spec)
    if method.needs:  # a config object left at a default that is another model's published setting
        try:
            method.for_model(models)
        except ValueError as err:
            defaults = method.config_cls()
            kept = [f for f in method.needs if getattr(spec, f) == getattr(defaults, f)]
            if kept:
                raise ValueError(f"{err}; {type(spec).__name__}'s default {', '.join(kept)} (another model's) "
                                 "cannot stand in: give this model's") from None
    return [spec]


def spec_to_plain(spec):
    """A YAML-friendly form of a spec: config objects become dicts with a "method" key."""
    if isinstance(spec, (list, tuple)):
        return [spec_to_plain(s) for s in spec]
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return {"method": method_of(spec).name, **dataclasses.asdict(spec)}
    return spec
