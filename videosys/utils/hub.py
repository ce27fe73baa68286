"""Finding checkpoints (local folder or hub id) and reading their weights."""

import contextlib
import glob
import json
import os

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable (truncated, corrupt) or not matching the model."""


@contextlib.contextmanager
def quiet_loading():
    """Hide what diffusers and transformers print on every load (per-file progress bars) while a checkpoint
    loads; their warnings and errors still show. The previous settings come back afterwards."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    states = []
    for module in (diffusers_logging, transformers_logging):
        states.append(module.is_progress_bar_enabled())
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, enabled in zip((diffusers_logging, transformers_logging), states):
            if enabled:
                module.enable_progress_bar()


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as err:  # safetensors' own error types: a short header, a truncated body, garbage
        raise CheckpointError(f"cannot read the weights file {path!r} ({type(err).__name__}: {err}); it is "
                              "truncated or corrupt: download or copy it again") from err


def resolve_dir(path_or_id: str, subfolder: str | None = None) -> str:
    """A local folder for `path_or_id[/subfolder]`: the folder itself, or a hub snapshot.

    Hub downloads go through huggingface_hub's cache; offline or unknown ids give one clear error.
    """
    local = os.path.join(path_or_id, subfolder) if subfolder else path_or_id
    if os.path.isdir(local):
        return local
    if os.path.exists(path_or_id) or path_or_id.startswith((".", "/")) or path_or_id.count("/") != 1:
        raise FileNotFoundError(f"no checkpoint folder at {local!r}")
    try:
        from huggingface_hub import snapshot_download

        patterns = [f"{subfolder}/*"] if subfolder else None
        root = snapshot_download(path_or_id, allow_patterns=patterns)
    except Exception as err:  # network, auth or unknown repo: say what was asked for and how to fix it
        raise FileNotFoundError(
            f"could not load {path_or_id!r}{f' (subfolder {subfolder!r})' if subfolder else ''}: it is not a local "
            f"folder and the hub download failed ({type(err).__name__}: {err}). Download it once and pass the local "
            "folder, or use a `tiny` preset offline."
        ) from err
    local = os.path.join(root, subfolder) if subfolder else root
    if not os.path.isdir(local):
        raise FileNotFoundError(f"{path_or_id!r} has no subfolder {subfolder!r}")
    return local


def read_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """Every weight in `folder`: sharded or single safetensors first, then .bin / .pt / .pth."""
    index = sorted(glob.glob(os.path.join(folder, "*.safetensors.index.json")))
    if index:
        with open(index[0]) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_safetensors(os.path.join(folder, shard)))
        return state
    single = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if single:
        state = {}
        for path in single:
            state.update(_load_safetensors(path))
        return state
    for ext in ("bin", "pt", "pth"):
        files = sorted(glob.glob(os.path.join(folder, f"*.{ext}")))
        if files:
            try:
                state = torch.load(files[0], map_location="cpu", weights_only=True)
            except Exception as err:  # a truncated zip / pickle
                raise CheckpointError(f"cannot read the weights file {files[0]!r} ({type(err).__name__}: {err}); "
                                      "it is truncated or corrupt: download or copy it again") from err
            return state.get("state_dict", state) if isinstance(state, dict) else state
    raise FileNotFoundError(f"no weights (*.safetensors, *.bin, *.pt) in {folder!r}")
