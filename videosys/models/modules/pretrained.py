"""Save / load for our own model classes in the official (diffusers-style) folder layout.

A model folder holds config.json (the official field names) and its weights. Loading builds
the model on the meta device, checks every key and shape against the checkpoint, and fails
with the missing and unexpected names instead of half-loading.
"""

import dataclasses
import json
import logging
import os

import torch
from torch import nn

from videosys.utils.hub import CheckpointError, quiet_loading, read_state_dict, resolve_dir

logger = logging.getLogger(__name__)


class CheckpointMismatchError(CheckpointError):
    pass


def load_pretrained(cls, folder: str, **kwargs):
    """`cls.from_pretrained(folder, **kwargs)` for a diffusers or transformers class, quietly (no accelerate
    notice, no per-load progress bars), with a checkpoint that does not fit the class (shapes, truncated
    files, a broken config) raised as CheckpointMismatchError naming the folder."""
    from diffusers import ModelMixin
    from diffusers.utils import is_accelerate_available

    if issubclass(cls, ModelMixin):  # its default (True) needs accelerate, and says so on every load without it
        kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())
    with quiet_loading():
        try:
            return cls.from_pretrained(folder, **kwargs)
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as err:
            raise CheckpointMismatchError(f"checkpoint {folder!r} does not load into {cls.__name__}: "
                                          f"{type(err).__name__}: {err}") from err


def _names(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def config_from_dict(config_cls, values: dict):
    """Build a config dataclass from a config.json dict; bookkeeping keys ("_...") are dropped."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(k for k in values if k not in known and not k.startswith("_"))
    if unknown:
        logger.warning("%s ignores config fields it does not use: %s", config_cls.__name__, ", ".join(unknown))
    return config_cls(**{k: v for k, v in values.items() if k in known})


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"checkpoint {source!r} does not match {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
        if wrong:
            parts.append(f"shape mismatches ({len(wrong)}): {'; '.join(wrong[:12])}")
        raise CheckpointMismatchError("\n  ".join(parts))


class PretrainedModel(nn.Module):
    """Base for our transformers: `config_class` is a dataclass with the official field names."""

    config_class: type
    class_name: str  # written as config.json's "_class_name" so diffusers can load our folders too
    keep_in_fp32: tuple[str, ...] = ()  # module names kept fp32 when loading in fp16 / bf16 (diffusers' same list)
    # what a release's checkpoints carry that the forward never reads, accepted by name and dropped on loading
    # (dotted names matched as whole key components: "attn2.norm_added_q" drops blocks.N.attn2.norm_added_q.*)
    release_only: tuple[str, ...] = ()
    weights_name = "diffusion_pytorch_model.safetensors"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_config(cls, config):
        if isinstance(config, dict):
            config = config_from_dict(cls.config_class, config)
        return cls(config)

    @classmethod
    def from_pretrained(cls, path: str, subfolder: str | None = None, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu"):
        folder = resolve_dir(path, subfolder)
        with open(os.path.join(folder, "config.json")) as f:
            config = config_from_dict(cls.config_class, json.load(f))
        return cls.from_state_dict(cls.read_checkpoint(folder), config, dtype, device, source=folder)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], config, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu", source: str = ""):
        """The model from a state dict in our keys, checked strictly (missing / unexpected keys and shapes named).
        Integer buffers (BatchNorm's num_batches_tracked) keep their dtype; in fp16 / bf16 the parameters of the
        modules named in `keep_in_fp32` stay fp32."""
        with torch.device("meta"):
            model = cls(config)
        known = model.state_dict().keys()  # a subclass that keeps such a buffer (Open-Sora-Plan v1.1) loads it
        state = {k: v for k, v in state.items() if k in known or not cls.is_release_only(k)}
        check_state_dict(model, state, source or "<state dict>")
        half = dtype in (torch.float16, torch.bfloat16)

        def cast(key: str, value: torch.Tensor) -> torch.Tensor:
            if not value.is_floating_point():
                return value
            keep = half and any(part in key.split(".") for part in cls.keep_in_fp32)
            return value.to(torch.float32 if keep else dtype)

        model.load_state_dict({k: cast(k, v) for k, v in state.items()}, strict=True, assign=True)
        return model.to(device=device).eval()

    @classmethod
    def is_release_only(cls, key: str) -> bool:
        return any(f".{name}." in f".{key}." for name in cls.release_only)

    @classmethod
    def read_checkpoint(cls, folder: str) -> dict[str, torch.Tensor]:
        """The state dict from_pretrained loads (safetensors first); a family whose release ships other
        files overrides this."""
        return read_state_dict(folder)

    def save_pretrained(self, folder: str) -> None:
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        config = {"_class_name": self.class_name, **dataclasses.asdict(self.config)}
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(folder, self.weights_name))
