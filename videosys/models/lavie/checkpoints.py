"""LaVie's release layout and its checkpoint files.

The release (Vchitect/LaVie README, "Download Pre-Trained models") puts everything in one folder:

    pretrained_models/
      lavie_base.pt  lavie_interpolation.pt  lavie_vsr.pt   the three UNets' state dicts (the release's keys)
      stable-diffusion-v1-4/                                 vae/, text_encoder/, tokenizer/, unet/config.json
      stable-diffusion-x4-upscaler/                          the VSR stage's components

`model_path` is that folder or the hub repository that holds the .pt files (YaohuiW/LaVie, linked from the README);
the SD-1.4 components come from its stable-diffusion-v1-4/ when there, else from `sd_path` (a folder or
CompVis/stable-diffusion-v1-4). The base UNet's architecture is SD-1.4's unet/config.json with its block types made
3D, as the release's `UNet3DConditionModel.from_pretrained_2d` builds it; the weights are lavie_base.pt, loaded
strictly (base/pipelines/sample.py: `unet.load_state_dict(find_model(ckpt_path))`).
"""

import json
import os

import torch

from videosys.models.lavie.unet import LaVieUNet3DModel, LaVieUNetConfig
from videosys.models.modules.pretrained import CheckpointMismatchError
from videosys.utils.files import atomic_path
from videosys.utils.hub import CheckpointError

CASCADE = ("base", "interpolation", "vsr")  # the release's stages, in the order each feeds the next
RELEASE_FILES = {"base": "lavie_base.pt", "interpolation": "lavie_interpolation.pt", "vsr": "lavie_vsr.pt"}
HUB_ID = "YaohuiW/LaVie"  # README: "Download pre-trained LaVie models" (huggingface.co/YaohuiW/LaVie)
SD_FOLDER = "stable-diffusion-v1-4"
SD_HUB_ID = "CompVis/stable-diffusion-v1-4"  # README: "Stable Diffusion 1.4"
ROTARY_KEY = "rotary_emb.freqs"


def release_file(path: str, name: str) -> str:
    """The local file `name` of a release folder or hub repository (downloaded once through the hub cache)."""
    local = os.path.join(path, name)
    if os.path.isfile(local):
        return local
    if os.path.isdir(path) or path.startswith((".", "/")) or path.count("/") != 1:
        raise FileNotFoundError(f"no {name} in {path!r} (the release's pretrained_models layout: "
                                f"videosys/models/lavie/checkpoints.py)")
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(path, name)
    except Exception as err:  # network, auth or unknown repo
        raise FileNotFoundError(f"could not load {name} from {path!r}: it is not a local folder and the hub download "
                                f"failed ({type(err).__name__}: {err}); download it once and pass the folder, or use "
                                "preset='tiny' offline") from err


def sd_components_path(model_path: str | None, sd_path: str | None) -> str:
    """Where SD-1.4's vae/, text_encoder/, tokenizer/ are: `sd_path`, else model_path's stable-diffusion-v1-4/
    (the release's layout), else the hub's CompVis/stable-diffusion-v1-4."""
    if sd_path is not None:
        return sd_path
    if model_path is not None and os.path.isdir(os.path.join(model_path, SD_FOLDER)):
        return os.path.join(model_path, SD_FOLDER)
    return SD_HUB_ID


def unet_config(sd_folder: str | None, **overrides) -> LaVieUNetConfig:
    """SD's unet/config.json in a local `sd_folder` (its 2D block types made 3D), else SD-1.4's values (the
    dataclass defaults); the keys this UNet does not use (act_fn, ...: SD-1.4's defaults) are left out."""
    path = os.path.join(sd_folder, "unet", "config.json") if sd_folder else ""
    values = {}
    if os.path.isfile(path):
        with open(path) as f:
            values = json.load(f)
    known = LaVieUNetConfig.__dataclass_fields__
    return LaVieUNetConfig(**{**{k: v for k, v in values.items() if k in known}, **overrides})


def read_release_state(file: str) -> dict[str, torch.Tensor]:
    """A release .pt's state dict; a training checkpoint's "ema" weights, as base/download.py find_model takes."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip / pickle
        raise CheckpointError(f"cannot read {file!r} ({type(err).__name__}: {err}); it is truncated or corrupt: "
                              "download or copy it again") from err
    if isinstance(state, dict) and "ema" in state:
        state = state["ema"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{file!r} holds no state dict (got {type(state).__name__})")
    return state


def rotary_frequencies(dim: int) -> torch.Tensor:
    """(dim / 2,) the angle per position of each channel pair, 1 / 10000^(2i / dim): what rope_1d turns by and
    rotary_embedding_torch keeps as `freqs`."""
    return 1.0 / 10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)


def check_rotary(state: dict, rotary_dim: int | None, source: str) -> None:
    """rotary_embedding_torch's fixed frequencies, carried per temporal attention, must be the formula's (which the
    UNet computes): a checkpoint with others would rotate differently."""
    if not rotary_dim:
        return
    expected = rotary_frequencies(rotary_dim)
    for key, value in state.items():
        if key.endswith(ROTARY_KEY) and (value.shape != expected.shape or
                                         not torch.allclose(value.float(), expected, rtol=1e-6, atol=0)):
            raise CheckpointMismatchError(f"checkpoint {source!r}: {key} holds rotary frequencies other than "
                                          f"1 / 10000^(2i / {rotary_dim}), which this UNet computes")


def load_unet(file: str, config: LaVieUNetConfig, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> LaVieUNet3DModel:
    """A release .pt (lavie_base.pt) into our UNet, strictly: missing and unexpected keys named."""
    state = read_release_state(file)
    check_rotary(state, config.rotary_dim, file)
    return LaVieUNet3DModel.from_state_dict(state, config, dtype, device, source=file)


def release_state(unet: LaVieUNet3DModel) -> dict[str, torch.Tensor]:
    """Our UNet's state dict in the release's layout: its keys, plus the rotary frequencies each temporal attention
    carries there."""
    state = {k: v.detach().cpu() for k, v in unet.state_dict().items()}
    if unet.config.rotary_dim:
        freqs = rotary_frequencies(unet.config.rotary_dim)
        for name, _ in unet.named_modules():
            if name.endswith("attn_temp"):
                state[f"{name}.{ROTARY_KEY}"] = freqs.clone()
    return state


def save_release_unet(unet: LaVieUNet3DModel, file: str) -> str:
    """Write `unet` as the release's .pt (a plain state dict), atomically."""
    with atomic_path(file, ".pt") as tmp:
        torch.save(release_state(unet), tmp)
    return file
