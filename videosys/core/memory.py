"""Will a generation fit in memory? A simple estimate, checked before any compute.

`estimate_peak_bytes(config, request)` is a deliberate lower bound on one call's peak on top of the loaded
weights (the check runs on an engine whose weights are already resident, so the available memory it is
compared with already excludes them): what any family must hold at once for the requested size:

- the decoded video: the VAE's fp32 pixels, the conversion's fp32 temporaries and the uint8 frames;
- the latents (at least 4 channels at 1/8 of the size, fp32, and the scheduler's copy);
- the transformer's widest activation (its largest Linear's output, for every token, both CFG branches,
  this process's share of the sequence), when the transformer is given.

Attention scores are not counted (the SDPA kernels, flash / memory-efficient on CUDA and CPU, do not hold
them whole), nor the VAE's intermediate feature maps (each family decodes in its own chunks). Being a lower
bound, it never refuses a size that fits; it refuses the sizes that cannot (HTTP `num_frames: 100000000`).
A memory planner can replace this module: the callers use `check_fits` alone.
"""

import os

import torch

from videosys.core.config import RequestError

_SIZE_FIELDS = ("num_frames", "height", "width")


def estimate_peak_bytes(config, request: dict, transformer=None, batch: int = 1) -> dict[str, int]:
    """Bytes by part ({"decoded video": ..., "latents": ..., "activations": ..., "total": ...}) of a call whose
    resolved values (config.check_request's) are `request`; an empty dict where the request has no size
    (a reconstruction: its size is the input video's)."""
    if any(not isinstance(request.get(name), int) for name in _SIZE_FIELDS):
        return {}
    frames, height, width = (request[name] for name in _SIZE_FIELDS)
    pixels = batch * frames * height * width
    parts = {"decoded video": pixels * 3 * (4 * 2 + 1)}  # fp32 from the VAE, one fp32 temporary, the uint8 frames
    latent = batch * frames * 4 * max(1, height // 8) * max(1, width // 8)
    parts["latents"] = latent * 4 * 2
    if transformer is not None:
        widest = max((m.out_features for m in transformer.modules() if isinstance(m, torch.nn.Linear)), default=0)
        tokens = frames * max(1, height // 16) * max(1, width // 16)  # 2x2 patches of the 1/8 latents
        branches = 2 if (request.get("guidance_scale") or 0) > 1 else 1
        share = max(1, config.num_gpus // (2 if config.cfg_parallel else 1))  # sequence parallel splits the tokens
        itemsize = torch.empty((), dtype=config.torch_dtype()).element_size()
        parts["activations"] = batch * branches * (tokens // share) * widest * itemsize
    parts["total"] = sum(parts.values())
    return parts


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation can take now: CUDA's free memory plus what torch's allocator holds unused; on
    the CPU, the kernel's MemAvailable (or free pages), capped by a cgroup (container) limit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:  # cgroup v2: a container's limit, less what it uses
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                available = min(available, int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    return available


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_fits(config, request: dict, transformer=None, batch: int = 1, device: torch.device | None = None) -> None:
    """A RequestError naming the size field furthest above the config's own value when the estimate exceeds
    the memory available on `device` (the config's by default); nothing otherwise."""
    parts = estimate_peak_bytes(config, request, transformer, batch)
    if not parts:
        return
    device = device or config.torch_device()
    free = available_bytes(device)
    if parts["total"] <= free:
        return
    field = max(_SIZE_FIELDS, key=lambda name: request[name] / max(1, getattr(config, name, None) or 1))
    detail = ", ".join(f"{name} {_size(n)}" for name, n in parts.items() if name != "total")
    raise RequestError(field, f"{field}={request[field]}: a {request['num_frames']}x{request['height']}x"
                       f"{request['width']} video needs an estimated {_size(parts['total'])} of memory at least "
                       f"({detail}), more than the {_size(free)} available on {device}; lower num_frames, height "
                       "or width")
