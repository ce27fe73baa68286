"""BaseConfig: what every family's config shares (weights, device, dtype, processes, defaults).

Generation fields left as None take the family's published default, or the preset's.
Configs are plain dataclasses; YAML goes through omegaconf.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass
class BaseConfig:
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
    # caches: `cache` = a registered name ("teacache-slow", "pab-357", "none": videosys.cache.choices()),
    # a method's config, a dict with a "method" key, or a list of these; or the papers' switches below
    enable_teacache: bool = False
    teacache_thresh: float = 0.1  # 0.1 = the paper's "slow", 0.2 = "fast"
    enable_pab: bool = False
    cache: Any = None
    compile: bool = False  # torch.compile the transformer blocks' branch computations (models/modules/compile.py)

    model_name: ClassVar[str] = ""
    official_model_path: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}  # published generation defaults
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # preset name -> generation defaults

    def __post_init__(self):
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
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}")
        if not isinstance(self.num_gpus, int) or self.num_gpus < 1:
            raise ValueError(f"num_gpus must be a positive integer, got {self.num_gpus!r}")
        self.cache_configs()  # a bad cache setting fails here, not mid-generation

    def cache_models(self) -> tuple[str, ...]:
        """The keys the caches look their published defaults up under, most specific first
        (a family with variants overrides this: ("cogvideox-5b", "cogvideox"))."""
        return (self.model_name,)

    def cache_configs(self) -> list:
        """The cache configs to enable on the transformer, from `cache` and the enable_* flags."""
        from videosys.cache import configs_from_spec
        from videosys.cache.registry import method_of

        specs = [self.cache] + [f"teacache-{self.teacache_thresh}"] * self.enable_teacache + ["pab"] * self.enable_pab
        configs = configs_from_spec(specs, self.cache_models())
        names = [method_of(c).name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"each cache method can be enabled once, got {names}")
        return configs

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

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
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
        values.pop("model", None)  # a YAML file may name its family, as the CLI's --config does
        return cls.from_dict({**values, **overrides})

    def to_yaml(self, path: str) -> None:
        from omegaconf import OmegaConf

        OmegaConf.save(OmegaConf.create({"model": self.model_name, **self.to_dict()}), path)

    @property
    def pipeline_cls(self):
        raise NotImplementedError
