"""The cache registry: a method registers once and is then reachable by name everywhere.

`register(...)` (one call, at the end of the method's file) makes the method's names parse in the
config field `cache=`, `--cache`, YAML, `engine.set_cache` and the bench / eval variant tables,
and keys its statistics in `out.stats` and the progress bar. Everything here reads `METHODS`.

Published settings belong to the families, never to a method file. A family config's
`cache_settings` maps method name -> cache key -> that method's published config fields, its
`cache_models()` names the checkpoint's keys, most specific first (("cogvideox-5b", "cogvideox")),
and `published_cache_settings()` (via `settings_for`) picks, per method, the first key the method's
table has: `published`, a dict method name -> fields, a method without any absent. Everything here
that builds configs takes that dict:

    config_from_name(name, published)            # "teacache-fast" -> TeaCacheConfig, "none" -> None
    configs_from_spec(spec, published) -> list   # names, "a+b", {"method": ...} dicts, config objects, lists
    method_for_name(name) -> (CacheMethod, arg)  # "teacache-0.2" -> (teacache's entry, "0.2")

and a method's `for_model(setting, **overrides)` (setting = published.get(name), None when the family
publishes nothing for it) builds its config from the family's fields, or its generic defaults, or
raises a ValueError saying what the model must supply (TeaCache's coefficients); `parse(arg, setting)`
likewise for "<name>-<arg>".

Legacy switches. A method may declare config fields its users already set (TeaCache: enable_teacache,
teacache_thresh; PAB: enable_pab) with `register(..., legacy_flags=LegacyFlags(...))`: the field names,
types, defaults and ranges, and the spec a switched-on flag stands for. core.config.BaseConfig inherits
them from `legacy_flags_class()` (so they parse in configs, YAML, `--set` and the server) and turns them
into specs with `legacy_specs(config)`; `legacy_ranges()` gives their ranges, `legacy_switches()` the
switches (a request naming its own cache turns them off). Only methods registered when videosys.cache is
imported can declare them (BaseConfig's fields are fixed when core.config is imported).
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

NONE_NAMES = ("", "none")


class NeedsCalibration(ValueError):
    """A method needs numbers fitted per model (TeaCache's polynomial, MagCache's ratios) and none are published for
    this one: the message names the command that fits them. `for_model(name, source)` says it for a given model."""

    def __init__(self, method: str, what: str, spec: str, model: str | None = None, source: str = "", flags: str = ""):
        self.method, self.what, self.spec, self.flags = method, what, spec, flags
        flag = ("" if method == "teacache" else f" --method {method}") + flags
        command = f"python scripts/calibrate_teacache.py{flag} --model {model or '<family>'}{source}"
        super().__init__(f"{method} needs this model's {what}, and none are published for "
                         f"{model or 'it'}: `{command}` fits them (for real weights: on a GPU), then pass the JSON's "
                         f"values as {spec}")

    def for_model(self, model: str, source: str = "") -> "NeedsCalibration":
        return NeedsCalibration(self.method, self.what, self.spec, model, source, self.flags)


@dataclass(frozen=True)
class Flag:
    """A config field of a method's legacy switches."""

    name: str
    type: type
    default: Any
    range: tuple[str, Callable[[Any], bool]] | None = None  # (what it must be, test), as core.config.RANGES


@dataclass(frozen=True)
class LegacyFlags:
    """A method's legacy config switches: the bool field `switch` (default False) turns it on, as the cache spec
    `spec(config)` (which may read the `settings` fields) would."""

    switch: str
    spec: Callable[[Any], Any]
    settings: tuple[Flag, ...] = ()


@dataclass(frozen=True)
class CacheMethod:
    name: str  # the spec prefix ("teacache", "teacache-0.2"), the key in out.stats and transformer.caches
    config_cls: type  # a dataclass: the method's settings
    cache_cls: type  # cache_cls(config): the per-transformer state, a videosys.cache.hooks.Cache
    for_model: Callable[[dict | None], Any]  # the config from a family's published fields (None: it has none)
    parse: Callable[[str, dict | None], Any] | None = None  # "0.2" of "teacache-0.2", fields -> config (None: unknown)
    names: tuple[str, ...] = ()  # published operating points ("teacache-slow"): CLI help, eval variants
    sweep: tuple[str, ...] = ()  # what a speed / quality frontier runs (scripts/bench_cache.py)
    syntax: str = ""  # the parametrised form for help and errors, e.g. "teacache-<threshold>"
    # fields a {"method": ...} spec must give for a model with no published setting (TeaCache: "coefficients");
    # empty: such a model's dict spec fails as its name does
    needs: tuple[str, ...] = ()
    # whether the method may skip or reuse the generation's last step (its output sets the video's fine detail):
    # False only where the method always computes that step (TeaCache, EasyCache, the output forecast)
    reuses_last_step: bool = True
    legacy_flags: LegacyFlags | None = None  # config switches its users already set (module docstring)
    # the names `videosys bench --pairs` combines this method by (default: its bare name); a method whose parts act at
    # different points adds a part alone ("fastercache-cfg": CFG-Cache, which joins module methods)
    pair_names: tuple[str, ...] = ()

    @property
    def pair_members(self) -> tuple[str, ...]:
        """Its pair names; a method without operating points (names, sweep, syntax: a calibration recorder) has none."""
        return self.pair_names or ((self.name,) if self.names or self.sweep or self.syntax else ())


METHODS: dict[str, CacheMethod] = {}


class OneThreshold:
    """Config mixin of a method with one setting for every family whose name gives a threshold
    ("fbcache-0.1", "easycache-0.05")."""

    @classmethod
    def for_model(cls, setting: dict | None = None, **overrides):
        return cls(**{**(setting or {}), **overrides})

    @classmethod
    def from_name(cls, arg: str, setting: dict | None = None):
        try:
            threshold = float(arg)
        except ValueError:
            return None
        return cls.for_model(setting, threshold=threshold)


def register(name: str, config_cls: type, cache_cls: type, for_model: Callable, parse: Callable | None = None,
             names=(), sweep=(), syntax: str = "", needs=(), reuses_last_step: bool = True,
             legacy_flags: LegacyFlags | None = None, pair_names=()) -> CacheMethod:
    """Make a method reachable by name. Registering the same name again replaces it only with the same
    config class (a module imported twice); another class under a taken name is an error."""
    old = METHODS.get(name)
    if old is not None and old.config_cls.__qualname__ != config_cls.__qualname__:
        raise ValueError(f"cache method {name!r} is already registered (by {old.config_cls.__qualname__})")
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{name}: the config must be a dataclass, got {config_cls!r}")
    method = CacheMethod(name, config_cls, cache_cls, for_model, parse, tuple(names), tuple(sweep), syntax,
                         tuple(needs), reuses_last_step, legacy_flags, tuple(pair_names))
    METHODS[name] = method
    cache_cls.method_name = name
    return method


def unregister(name: str) -> None:
    """Forget a method (a test's own, after its tests)."""
    METHODS.pop(name, None)


def settings_for(cache_settings: dict[str, dict[str, dict]], keys: tuple[str, ...]) -> dict[str, dict]:
    """Method name -> the fields published under the first of `keys` (a checkpoint's cache keys, most specific
    first) that the method's table has; a method with none of them is absent."""
    published = {}
    for method, table in cache_settings.items():
        key = next((k for k in keys if k in table), None)
        if key is not None:
            published[method] = table[key]
    return published


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


def method_for_name(name: str) -> tuple[CacheMethod, str | None]:
    """The method a name belongs to and the argument after "<method>-" (None for the bare name)."""
    best = None
    for method in METHODS.values():
        if name == method.name or name.startswith(method.name + "-"):
            if best is None or len(method.name) > len(best.name):
                best = method
    if best is None:
        raise ValueError(f"unknown cache {name!r}; choose from {', '.join(choices())}")
    return best, (name[len(best.name) + 1:] if name != best.name else None)


def config_from_name(name: str, published: dict[str, dict]):
    """A config from a name ("teacache-fast", "pab-357", "teacache") and a model's published settings (method
    name -> fields), None for "none"."""
    key = name.strip().lower()
    if key in NONE_NAMES:
        return None
    method, arg = method_for_name(key)
    if arg is None:
        return method.for_model(published.get(method.name))
    config = method.parse(arg, published.get(method.name)) if method.parse is not None else None
    if config is None:
        raise ValueError(f"unknown cache {name!r}; choose from {', '.join(choices())}")
    return config


def configs_from_spec(spec, published: dict[str, dict]) -> list:
    """Cache configs from a name ("a+b": both), a dict with a "method" key (the published config with its
    fields replaced), a registered config object, or a list of these, for a model with these published settings
    (method name -> fields: BaseConfig.published_cache_settings()); a combination that cannot run together
    (check_combination) is refused here, before anything is enabled."""
    configs = _configs(spec, published)
    check_combination(configs)
    return configs


# Pairs that act at different points but give a worse video than either method alone on the demo models, measured
# by `videosys bench --pairs` (benchmarks/bench_pairs_demo*.json, docs/caches/combinations.md): refused with the
# measured reason. Keyed by each method's name and the points it acts at ("fastercache@cfg": its CFG part alone).
_AMPLIFIED = ("the output forecast extrapolates the model's predictions from the steps it computes, so {what}'s error on "
              "those steps is amplified into every forecast step: on the demo model (videosys bench --pairs, 4 held-back "
              "prompts) {pair} dB, against {forecast} dB for the forecast and {alone} dB for {what} alone")
REFUSED_PAIRS: dict[frozenset, str] = {
    frozenset({"forecast@step_output", label}): _AMPLIFIED.format(what=what, pair=pair, forecast=47.98, alone=alone)
    for label, what, pair, alone in [
        ("fastercache@cfg", "FasterCache's CFG part", 16.45, 26.39),
        ("fastercache@cfg+module", "FasterCache", 16.49, 26.18),
        ("teacache@stack", "TeaCache", 31.77, 42.25),
        ("fbcache@stack", "First-Block-Cache", 36.54, 44.31),
        ("magcache@stack", "MagCache", 25.95, 36.30),
    ]}
_COMPOUNDED = ("on the {model} model (videosys bench --pairs, 4 held-back prompts) the pair keeps {pair} dB, against "
               "{a} / {b} dB alone and {added} dB if their errors just added (likely: {why})")
REFUSED_PAIRS.update({
    frozenset(labels): _COMPOUNDED.format(model=model, pair=pair, a=a, b=b, added=added, why=why)
    for labels, model, pair, a, b, added, why in [
        (("forecast@step_output", "skipcache@stack"), "demo-skip", 39.90, 43.39, 49.38, 42.41,
         "the forecast extrapolates from predictions built on the reused skip-branch features"),
        (("teacache@stack", "fastercache@cfg"), "demo-skip", 28.97, 38.75, 31.60, 30.83,
         "TeaCache keeps one state per CFG branch, so the cond-only calls reuse residuals across the batched steps"),
        (("skipcache@stack", "fastercache@cfg"), "demo-skip", 29.90, 49.38, 31.60, 31.53,
         "Skip-Cache keeps one state per CFG branch, so the cond-only calls reuse features across the batched steps"),
        (("magcache@stack", "fastercache@cfg+module"), "demo-skip", 27.06, 34.05, 30.08, 28.61,
         "MagCache skips the stack whose attention FasterCache extrapolates, and the skipped steps stretch it"),
        (("pab@module", "easycache@stack"), "demo-skip", 22.93, 24.05, 100.0, 24.05,
         "PAB's broadcast outputs lower EasyCache's measured rate of change, so it reuses steps it never reuses alone"),
    ]})
# Worse than both members although within 1 dB of their errors just adding: nothing interacts, the two errors add,
# and the pair keeps less of the video than either method alone. Refused all the same: a combination a user turns on
# must not silently give a video worse than both of its parts (the rule of `videosys bench --pairs`).
_ADDED = ("on the {model} model (videosys bench --pairs, 4 held-back prompts) the pair keeps {pair} dB, less than "
          "either method alone ({a} / {b} dB; {added} dB if their errors just added): use one of them alone, at a "
          "faster setting if you need the speed (videosys tune picks one for a quality budget)")
REFUSED_PAIRS.update({
    frozenset(labels): _ADDED.format(model=model, pair=pair, a=a, b=b, added=added)
    for labels, model, pair, a, b, added in [
        (("teacache@stack", "pab@module"), "demo", 26.32, 42.25, 26.98, 26.86),
        (("teacache@stack", "fastercache@cfg+module"), "demo", 25.53, 42.25, 26.18, 26.07),
        (("fastercache@cfg", "taylorseer@module"), "demo", 23.41, 26.39, 26.51, 23.44),
        (("fastercache@cfg", "magcache@stack"), "demo", 25.62, 26.39, 36.30, 25.97),
        (("taylorseer@module", "forecast@step_output"), "demo", 25.85, 26.51, 47.98, 26.48),
        (("fastercache@cfg+module", "fbcache@stack"), "demo-skip", 29.55, 30.08, 38.26, 29.46),
        (("fastercache@cfg+module", "skipcache@stack"), "demo-skip", 29.30, 30.08, 49.38, 30.03),
        (("fastercache@cfg", "fbcache@stack"), "demo-skip", 30.65, 31.60, 38.26, 30.75),
        (("taylorseer@module", "skipcache@stack"), "demo-skip", 19.59, 20.09, 49.38, 20.09),
        (("foca@module", "skipcache@stack"), "demo-skip", 14.62, 14.75, 49.38, 14.75),
    ]})


def pair_label(config) -> str:
    """"<method>@<points>": how REFUSED_PAIRS names a method with the parts its config turns on."""
    method = method_of(config)
    return f"{method.name}@{'+'.join(sorted(method.cache_cls.acts_at(config)))}"


def check_combination(configs: list) -> None:
    """Raise unless the methods can be active together: each at most once, no two acting at the same hook
    point (each would replace what the other computes there: `Cache.acts_at`), and no pair measured to give a worse
    video than either alone (REFUSED_PAIRS)."""
    names = [method_of(c).name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"each cache method can be enabled once, got {names}")
    owner = {}
    for name, config in zip(names, configs):
        for point in sorted(method_of(config).cache_cls.acts_at(config)):
            if point in owner:
                raise ValueError(f"cache methods {owner[point]} and {name} both act at the {point!r} hook point; "
                                 "combine methods that act at different points (stack, module, cfg, step_output), "
                                 "e.g. pab+fastercache-cfg")
            owner[point] = name
    labels = [pair_label(c) for c in configs]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            reason = REFUSED_PAIRS.get(frozenset((a, b)))
            if reason is not None:
                raise ValueError(f"cache methods {a} and {b} are refused together: {reason}")


def _configs(spec, published: dict[str, dict]) -> list:
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return [c for s in spec for c in _configs(s, published)]
    if isinstance(spec, str) and "+" in spec:
        return _configs(spec.split("+"), published)
    if isinstance(spec, str):
        config = config_from_name(spec, published)
        return [] if config is None else [config]
    if isinstance(spec, dict):
        values = dict(spec)
        name = values.pop("method", None)
        if name not in METHODS:
            raise ValueError(f"a cache dict needs a registered 'method' ({', '.join(sorted(METHODS))}), got {name!r}")
        method = METHODS[name]
        try:
            base = method.for_model(published.get(name))
        except ValueError:  # nothing published for this model: the class defaults with the dict's settings
            if not values or any(f not in values for f in method.needs):
                raise  # a method needing fitted numbers says which (NeedsCalibration) and how to get them
            return [method.config_cls(**values)]
        return [dataclasses.replace(base, **values)]
    if not any(type(spec) is m.config_cls for m in METHODS.values()):
        raise ValueError(f"unknown cache {spec!r}; choose from {', '.join(choices())} or a registered config")
    return [spec]  # a config object carries its own settings (TeaCache's coefficients have no default)


def spec_to_plain(spec):
    """A YAML-friendly form of a spec: config objects become dicts with a "method" key."""
    if isinstance(spec, (list, tuple)):
        return [spec_to_plain(s) for s in spec]
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return {"method": method_of(spec).name, **dataclasses.asdict(spec)}
    return spec


# ---- legacy switches (the module docstring) ----------------------------------------------------------

def _legacy() -> list[LegacyFlags]:
    return [m.legacy_flags for m in METHODS.values() if m.legacy_flags is not None]


def legacy_flags_class() -> type:
    """A dataclass of every registered method's legacy fields (in registration order), for a config to inherit."""
    fields = []
    for flags in _legacy():
        fields.append((flags.switch, bool, dataclasses.field(default=False)))
        fields += [(f.name, f.type, dataclasses.field(default=f.default)) for f in flags.settings]
    return dataclasses.make_dataclass("LegacyCacheFlags", fields)


def legacy_ranges() -> dict[str, tuple[str, Callable[[Any], bool]]]:
    """Field name -> (what it must be, test) of the legacy fields that have a range."""
    return {f.name: f.range for flags in _legacy() for f in flags.settings if f.range is not None}


def legacy_switches() -> list[str]:
    """The switch fields ("enable_teacache", ...)."""
    return [flags.switch for flags in _legacy()]


def legacy_specs(config) -> list:
    """The cache specs of the switches that are on in `config` (registration order: TeaCache's before PAB's)."""
    return [flags.spec(config) for flags in _legacy() if getattr(config, flags.switch)]
