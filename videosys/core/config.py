"""BaseConfig: what every family's config shares (weights, device, dtype, processes, defaults).

Generation fields left as None take the family's published default, or the preset's.
Configs are plain dataclasses; YAML goes through omegaconf.

Every field is checked when the config is built, whatever the entry point (API, YAML, CLI):
its value against the field's annotation (an int field refuses a bool or "ten", a bool field
refuses 1) and, for the fields in RANGES, against its range; the message names the field.
What depends on the machine (devices, cores, the model's heads) is checked by `check_launch`,
which the engine calls before any process starts or weight loads.
"""

import dataclasses
import functools
import json
import inspect
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

import videosys.cache  # noqa: F401 - every cache method registers on import, its legacy config switches with it
from videosys.cache.registry import legacy_flags_class, legacy_ranges, legacy_specs

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_DEVICE_TYPES = ("cpu", "cuda")
# Set to 1 to start more CPU processes than this machine has cores (each then gets one thread).
OVERSUBSCRIBE_ENV = "VIDEOSYS_ALLOW_OVERSUBSCRIBE"

# field name -> (what it must be, test); shared by every family that has a field of that name
RANGES = {
    "num_gpus": (">= 1", lambda v: v >= 1),
    "num_frames": (">= 1", lambda v: v >= 1),  # Open-Sora's duration names ("4s") are checked by the family
    "height": (">= 1", lambda v: v >= 1),
    "width": (">= 1", lambda v: v >= 1),
    "num_inference_steps": (">= 1", lambda v: v >= 1),
    "guidance_scale": (">= 0", lambda v: v >= 0),
    "fps": ("> 0", lambda v: v > 0),
    "heartbeat_timeout": ("> 0", lambda v: v > 0),
    "max_text_length": (">= 1", lambda v: v >= 1),
    "decode_chunk_size": (">= 1", lambda v: v >= 1),
    "beta_start": ("> 0", lambda v: v > 0),
    "beta_end": ("> 0", lambda v: v > 0),
    "tile_overlap_factor": ("in [0, 1)", lambda v: 0 <= v < 1),
    **legacy_ranges(),  # the cache methods' legacy switches' (teacache_thresh >= 0)
}
_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "None"}


def _allowed_types(annotation) -> tuple | None:
    """The plain types a field annotation allows (`int | None` -> (int, NoneType)); None: anything."""
    if annotation is Any or isinstance(annotation, str):
        return None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,) if isinstance(annotation, type) else None


def check_value(name: str, annotation, value):
    """`value` as the field allows it (an int for a float field becomes a float), or a ValueError naming the field."""
    allowed = _allowed_types(annotation)
    if allowed is None:
        return value
    if value is None and type(None) in allowed:
        return value
    if isinstance(value, bool):  # bool is an int subclass: num_gpus=True is not 1
        ok = bool in allowed
    elif isinstance(value, int):
        ok = int in allowed or float in allowed
        if ok and int not in allowed:
            value = float(value)
    else:
        ok = any(kind not in (bool, int) and isinstance(value, kind) for kind in allowed)
    if not ok:
        kinds = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in allowed)
        raise ValueError(f"{name} must be {kinds}, got {value!r}")
    if name in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        text, test = RANGES[name]
        if not math.isfinite(value) or not test(value):
            raise ValueError(f"{name} must be {'finite and ' if not math.isfinite(value) else ''}{text}, got {value!r}")
    return value


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _checks_request_when_built(post_init):
    """`post_init` followed, once the outermost __post_init__ has returned, by the config's request checks on its
    own values: a family filling fields after BaseConfig's __post_init__ (Open-Sora's named sizes) is checked
    on the finished values, and no family has to remember the call."""

    @functools.wraps(post_init)
    def checked(self):
        outermost = "_building" not in self.__dict__
        self.__dict__["_building"] = True
        try:
            post_init(self)
        finally:
            if outermost:
                del self.__dict__["_building"]
        if outermost:
            self.__dict__["_own_values"] = True
            try:
                self.check_request({})
            finally:
                del self.__dict__["_own_values"]

    checked.checks_request = True
    return checked


@dataclass
class BaseConfig(legacy_flags_class()):
    """The fields every family shares. Inherited first: the cache methods' legacy switches (enable_teacache,
    teacache_thresh, enable_pab; each declared by its method file: registry.LegacyFlags)."""

    model_path: str | None = None  # hub id or local folder; None: the family's official checkpoint
    preset: str | None = None  # e.g. "tiny": small architecture, random weights unless model_path is given
    dtype: str = "auto"  # auto: fp32 on CPU (bf16 ~100x slower there); CUDA: the family's (bf16; CogVideoX-2b fp16)
    device: str = "auto"
    num_gpus: int = 1  # processes (one GPU each on CUDA); > 1 starts workers (or use torchrun)
    cfg_parallel: bool = False  # with an even num_gpus: cond and uncond on different ranks, sp = num_gpus / 2
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    fps: int | None = None
    progress_bar: bool = True
    # with num_gpus > 1: a worker silent for this long inside a call (stopped, hung) is killed and the call fails
    heartbeat_timeout: float = 10.0
    # caches: `cache` = a registered name ("teacache-slow", "pab-357", "none": videosys.cache.choices()),
    # a method's config, a dict with a "method" key, or a list of these; or the methods' legacy switches
    # (enable_teacache, teacache_thresh, enable_pab: inherited, see the class docstring)
    cache: Any = None
    compile: bool = False  # torch.compile the transformer, as the active caches allow (models/modules/compile.py)
    # FreeInit (core/freeinit.py; defaults: diffusers' enable_free_init): runs of the sampler (1 = off), the
    # low-pass filter (butterworth | gaussian | ideal | box), its order and stop frequencies d_s / d_t,
    # coarse-to-fine step counts, and in how many of the first runs the caches stay on (None: all)
    freeinit_iters: int = 1
    freeinit_method: str = "butterworth"
    freeinit_order: int = 4
    freeinit_spatial_stop: float = 0.25
    freeinit_temporal_stop: float = 0.25
    freeinit_fast_sampling: bool = False
    freeinit_cache_iters: int | None = None
    # memory (core/planner.py, core/offload.py, docs/memory.md): `vram` ("24GB", GiB as a card reports it) makes the
    # engine pick the cheapest offload / quantize / VAE tiling that fits, refusing before any compute when none does
    vram: str | None = None
    offload: str = "none"  # none | encoders (text encoder off the device after encoding) | model | group
    quantize: str = "none"  # none | int8 (torchao weight-only) | fp8 (fp8 storage, diffusers' layerwise casting)
    vae_tile_size: int | None = None  # with the family's vae_tiling: tile height in pixels (None: the VAE's default)

    model_name: ClassVar[str] = ""
    official_model_path: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}  # published generation defaults
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # preset name -> generation defaults
    # published cache settings: method name -> cache key (cache_models) -> that method's config fields; a family
    # sets it from its own cache_settings.py (the methods in videosys/cache/ hold no family's numbers)
    cache_settings: ClassVar[dict[str, dict[str, dict]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        post_init = cls.__dict__.get("__post_init__")
        if post_init is not None and not getattr(post_init, "checks_request", False):
            cls.__post_init__ = _checks_request_when_built(post_init)

    @_checks_request_when_built
    def __post_init__(self):
        self.check_fields()
        if self.preset is not None and self.preset not in self.presets:
            raise ValueError(f"unknown preset {self.preset!r} for {self.model_name}; choose from {sorted(self.presets)}")
        if self.model_path is None and self.preset is None:
            self.model_path = self.official_model_path
        values = {**self.defaults, **self.presets.get(self.preset, {})}
        for name, value in values.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.cfg_parallel and self.num_gpus > 1 and self.num_gpus % 2:
            raise ValueError(f"cfg_parallel splits the processes into a cond and an uncond half: num_gpus must be "
                             f"even, got {self.num_gpus}")
        self.check_device_name()
        from videosys.core.offload import check_memory_settings

        check_memory_settings(self)
        self.check_cache_fits(self.cache_configs())  # a bad cache setting fails here, not mid-generation
        self.freeinit_config()  # likewise FreeInit's settings

    def check_fields(self) -> None:
        """Each field's value against its annotation and range (a family calls this first if its own
        __post_init__ reads fields before BaseConfig's runs)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(f.name, f.type, getattr(self, f.name)))

    @classmethod
    def parse_field(cls, name: str, raw: str):
        """A command-line string (`--set name=raw`) as the field's type: "7" for an int field is 7,
        "true" for a bool field is True, "none" for an optional field is None; "high" for a float field
        is an error naming the field. A field without a plain type (`cache`) gets the value's own type."""
        annotation = {f.name: f.type for f in dataclasses.fields(cls)}.get(name)
        allowed = _allowed_types(annotation) if annotation is not None else None
        if allowed is None:
            return _guess_value(raw)
        if raw.lower() in ("none", "null") and type(None) in allowed:
            return None
        if bool in allowed and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        for kind in (int, float):
            if kind in allowed:
                try:
                    return kind(raw)
                except ValueError:
                    pass
        if str in allowed:
            return raw
        kinds = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in allowed)
        raise ValueError(f"{name} must be {kinds}, got {raw!r}")

    def check_device_name(self) -> None:
        if self.device == "auto":
            return
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError):
            device = None
        if device is None or device.type not in _DEVICE_TYPES:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {self.device!r}")

    def prompt_vocabulary(self) -> frozenset[str] | None:
        """The only words the model understands (a demo model trained on a fixed set of captions), else None;
        a prompt with other words gets a warning."""
        return None

    def sp_heads(self) -> int | None:
        """Attention heads the sequence-parallel size must divide (Ulysses shards heads), or None when the
        family's sequence parallelism has no such limit. A family with Ulysses overrides this."""
        return None

    def transformer_config_value(self, key: str, folder: str | None = None):
        """`key` of the checkpoint's transformer config.json, read without loading weights; None when the
        checkpoint is not a local folder (a hub id not downloaded yet)."""
        folder = folder or self.model_path
        if not folder or not os.path.isdir(folder):
            return None
        for candidate in (os.path.join(folder, "transformer", "config.json"), os.path.join(folder, "config.json")):
            if os.path.isfile(candidate):
                with open(candidate) as f:
                    return json.load(f).get(key)
        return None

    # ---- a generation request's checks (no weights needed) ---------------------------------------
    # generate() values every text-to-video family has; None in a request takes the config's value
    REQUEST_VALUES: ClassVar[tuple[str, ...]] = ("num_frames", "height", "width", "num_inference_steps",
                                                 "guidance_scale")

    @property
    def checking_own_values(self) -> bool:
        """True while the request checks run on the config's own values (as it is built): a check of what only a
        call gives (an image-to-video call's image) passes then."""
        return "_own_values" in self.__dict__

    def default_negative_prompt(self) -> str:
        """What negative_prompt=None means: the config's (a family with a published one), else ""."""
        value = getattr(self, "negative_prompt", None)
        return "" if value is None else value

    def check_request(self, values: dict) -> dict:
        """The values of a generate() call (arguments after the prompt), resolved and checked before any
        weight loads: None (or absent) takes the config's value, each value gets its field's type and
        range checks, and the family's checks (its size grid, named sizes, ...) run on the result. Raises
        RequestError (a ValueError) naming the field; returns the resolved values (other keys kept).

        Called on the config's own values when a family config is built, by the engine before it
        dispatches a call, by `videosys serve` at submission, and by the pipeline's generate().
        A family overrides it (calling this first) to add its checks.
        """
        out = dict(values)
        negative = out.get("negative_prompt")
        if negative is None:
            out["negative_prompt"] = self.default_negative_prompt()
        elif not isinstance(negative, str):
            raise RequestError("negative_prompt", f"negative_prompt must be a string or None (the model's default), "
                               f"got {negative!r}")
        for name in self.REQUEST_VALUES:
            if out.get(name) is None:
                out[name] = getattr(self, name, None)
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        for name in self.REQUEST_VALUES:  # a family checks its other values (they may differ from its fields')
            value = out[name]
            if name in fields and value is not None:
                try:
                    out[name] = check_value(name, fields[name], value)
                except ValueError as err:
                    raise RequestError(name, str(err)) from None
        for name in ("num_frames", "height", "width", "num_inference_steps"):
            value = out.get(name)  # None: a family without the value (CascadeV reconstructs, it has no size)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise RequestError(name, f"{name} must be a positive integer, got {value!r}")
        if out.get("guidance_scale") is not None and out["guidance_scale"] < 0:
            raise RequestError("guidance_scale", f"guidance_scale must be >= 0, got {out['guidance_scale']!r}")
        return out

    def vae_downsampling(self, folder: str | None, default: int = 8) -> int:
        """The spatial downsampling of a diffusers-layout VAE (2 ** (levels - 1)), read from a local
        checkpoint's vae/config.json without loading it; `default` (the release's) otherwise."""
        blocks = self.transformer_config_value("block_out_channels", os.path.join(folder, "vae")) if folder else None
        return 2 ** (len(blocks) - 1) if blocks else default

    @staticmethod
    def check_divisible(values: dict, factor: int, why: str, names=("height", "width")) -> None:
        """Each of `names` divisible by `factor` (a size grid), or a RequestError naming the field."""
        for name in names:
            if values[name] % factor:
                raise RequestError(name, f"{name}={values[name]} must be divisible by {factor} ({why})")

    def check_launch(self, world: int, spawning: bool) -> None:
        """What the machine and the model must allow for `world` processes, checked before any process starts
        or weight loads: the device, the cores (when the engine spawns CPU workers), the cfg split, the heads."""
        device = self.torch_device()
        if spawning and device.type == "cpu" and world > available_cores() and os.environ.get(OVERSUBSCRIBE_ENV) != "1":
            raise ValueError(f"num_gpus={world} CPU processes but this machine gives this process "
                             f"{available_cores()} cores: each would get a fraction of a core. Use at most "
                             f"{available_cores()}, or set {OVERSUBSCRIBE_ENV}=1 if you mean it")
        from videosys.core.parallel import mesh_shape

        _, sp = mesh_shape(world, self.cfg_parallel)
        heads = self.sp_heads()
        if sp > 1 and heads and heads % sp:
            split = f" (num_gpus={world} with cfg_parallel leaves sp={sp})" if self.cfg_parallel else ""
            raise ValueError(f"{self.model_name}'s sequence parallelism gives each process whole attention heads: "
                             f"its {heads} heads do not divide by sp={sp}{split}")

    def skip_branches(self) -> bool | None:
        """Whether the transformer has Skip-DiT skip branches, as far as the config tells without weights (None:
        unknown, e.g. a hub id not downloaded). Only Latte's transformer has them (its override says which)."""
        return False

    def check_cache_fits(self, caches: list) -> None:
        """A cache that needs what the model, as the config describes it, lacks: refused now, naming `cache`,
        rather than once the weights have loaded (Skip-Cache on a model without skip branches)."""
        if any(getattr(c, "needs_skip_branches", False) for c in caches) and self.skip_branches() is False:
            raise RequestError("cache", f"Skip-Cache needs a model with Skip-DiT skip branches; {self.model_name} "
                               f"({self.preset or self.model_path}) has none (Latte's Skip-DiT presets have them: "
                               "tiny-skip, demo-skip)")

    def cache_models(self) -> tuple[str, ...]:
        """The keys the caches look their published defaults up under, most specific first
        (a family with variants overrides this: ("cogvideox-5b", "cogvideox"))."""
        return (self.model_name,)

    def published_cache_settings(self) -> dict[str, dict]:
        """Method name -> this checkpoint's published fields (the first of `cache_models()` the method's table in
        `cache_settings` has); methods without an entry are absent."""
        from videosys.cache.registry import settings_for

        return settings_for(self.cache_settings, self.cache_models())

    def cache_configs(self) -> list:
        """The cache configs to enable on the transformer, from `cache` and the enable_* flags."""
        return self.resolve_cache([self.cache] + legacy_specs(self))

    def resolve_cache(self, spec) -> list:
        """Cache configs for a spec (a name, a dict, a config or a list: videosys.cache) with this checkpoint's
        published settings; the combination is checked, and a method that needs a calibration says the command
        for this model."""
        from videosys.cache.registry import NeedsCalibration, configs_from_spec

        try:
            return configs_from_spec(spec, self.published_cache_settings())
        except NeedsCalibration as err:
            source = f" --preset {self.preset}" if self.preset else f" --model-path {self.model_path}"
            raise err.for_model(self.model_name, source) from None

    def freeinit_config(self):
        """The FreeInit settings (core/freeinit.FreeInitConfig), None when it is off (freeinit_iters == 1)."""
        from videosys.core.freeinit import FreeInitConfig

        config = FreeInitConfig(iters=self.freeinit_iters, method=self.freeinit_method, order=self.freeinit_order,
                                spatial_stop_frequency=self.freeinit_spatial_stop,
                                temporal_stop_frequency=self.freeinit_temporal_stop,
                                fast_sampling=self.freeinit_fast_sampling, cache_iters=self.freeinit_cache_iters)
        return None if config.iters == 1 else config

    def torch_device(self) -> torch.device:
        """The device to run on; a CUDA device that is not there is an error here, before any weight loads."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.check_device_name()
        device = torch.device(self.device)
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ValueError(f"device={self.device!r} but no CUDA GPU is visible here; use device='cpu' "
                                 "(or 'auto', which picks the GPU when there is one)")
            if device.index is not None and device.index >= count:
                raise ValueError(f"device={self.device!r} but only {count} CUDA device(s) are visible "
                                 f"(cuda:0..cuda:{count - 1})")
        return device

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        from videosys.cache import spec_to_plain

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["cache"] = spec_to_plain(self.cache)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str, **overrides):
        from videosys.utils.files import load_yaml

        values = load_yaml(path)  # a parse error names the file and line
        values.pop("model", None)  # a YAML file may name its family, as the CLI's --config does
        return cls.from_dict({**values, **overrides})

    def to_yaml(self, path: str) -> None:
        from omegaconf import OmegaConf

        OmegaConf.save(OmegaConf.create({"model": self.model_name, **self.to_dict()}), path)

    @property
    def pipeline_cls(self):
        raise NotImplementedError


def _guess_value(raw: str):
    """7 -> int, 0.5 -> float, true / false / none -> bool / None; anything else (9:16, 720p) stays a string."""
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(raw.lower(), raw)


class RequestError(ValueError):
    """A generation request's bad value; `field` names it (the server's 422 points at it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_prompt(prompt, name: str = "prompt") -> list[str]:
    """`prompt` (a string or a list / tuple of strings) as a list, or a RequestError naming it. Checked here
    rather than where the tokenizer runs: bytes, an int or a lone surrogate (a non-UTF-8 `--prompt` decoded by
    Python with surrogateescape) otherwise fail mid-call with an error that does not say which argument."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise RequestError(name, f"{name} must be a non-empty string or a list of non-empty strings, got {prompt!r}")
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RequestError(name, f"{name} is not valid text (cannot be encoded as UTF-8: {err.reason} at "
                               f"character {err.start}); was it read with the wrong encoding?") from None
    return prompts


def check_media_file(path, field: str, kind: str = "image") -> str:
    """`path` if it is a readable `kind` ("image" or "video") file, else a RequestError naming `field` and the
    file: probed (Pillow / ffmpeg) before any model work, so a text file named .png or a truncated download is
    refused at once rather than failing inside a VAE's preprocessing."""
    from videosys.utils.video import probe_image, probe_video

    try:
        return (probe_video if kind == "video" else probe_image)(path, field)
    except ValueError as err:
        raise RequestError(field, str(err)) from None


def check_seed(seed) -> int:
    """An integer seed (numpy's too) as an int, or a RequestError naming `seed`: a string or float otherwise
    fails inside torch.manual_seed, after the call has started, without naming it; True is not a seed."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise RequestError("seed", f"seed must be an integer, got {seed!r}")
    return int(seed)


def check_seeds(seed, prompts: int, per_sample: bool = True) -> list[int]:
    """One seed per prompt: an integer (every prompt's noise drawn in one go from it, as always), or a list of
    `prompts` integers (each prompt's noise from its own seed: a batch that reproduces the single runs), where
    the pipeline takes one (`per_sample`: VideoSysPipeline.takes_seed_lists)."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != prompts:
            raise RequestError("seed", f"seed: a list needs one seed per prompt ({prompts}), got {len(seed)}")
        if len(seed) > 1 and not per_sample:
            raise RequestError("seed", "this model takes one seed per call here (its sampler or FreeInit draws more "
                               "noise than the first latents): give an integer")
        return [check_seed(s) for s in seed]
    return [check_seed(seed)]


def check_call(generate, prompt, kwargs: dict, per_sample_seeds: bool = True) -> list[str]:
    """A generate() call's prompt, seed and keyword names against `generate`'s signature, before the engine
    dispatches it (a worker's TypeError would otherwise come back from another process, mid-call); returns
    the prompts as a list."""
    prompts = check_prompt(prompt)
    seed = kwargs.get("seed", 0)
    for one in seed if isinstance(seed, (list, tuple)) else [seed]:
        if isinstance(one, bool) or not isinstance(one, numbers.Integral):  # the type only: the pipeline converts it
            check_seed(one)
    if isinstance(seed, (list, tuple)):
        check_seeds(seed, len(prompts), per_sample_seeds)
    params = inspect.signature(generate).parameters
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()):
        return prompts  # a family whose generate() takes anything says itself what it refuses
    allowed = [n for n in params if n not in ("self", "prompt")]
    for name in kwargs:
        if name not in allowed:
            raise RequestError(name, f"generate() got an unknown argument {name!r}; allowed: {', '.join(allowed)}")
    return prompts
