"""The model families, by the name the CLI and YAML files use."""

import importlib
import importlib.util

# name -> "module:ConfigClass"; a family registers here with one line
FAMILIES = {
    "latte": "videosys.models.latte.pipeline:LatteConfig",
    "cogvideox": "videosys.models.cogvideox.pipeline:CogVideoXConfig",
    "open-sora": "videosys.models.open_sora.pipeline:OpenSoraConfig",
    "open-sora-plan": "videosys.models.open_sora_plan.pipeline:OpenSoraPlanConfig",
    "cascadev": "videosys.models.cascadev.pipeline:CascadeVConfig",
    "hunyuanvideo-1.5": "videosys.models.hunyuanvideo15.pipeline:HunyuanVideo15Config",
    "wan": "videosys.models.wan.pipeline:WanConfig",
    "lavie": "videosys.models.lavie.pipeline:LaVieConfig",
}


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is not there either
        return False


def available() -> list[str]:
    """Families whose code is present in this install."""
    return [name for name, target in FAMILIES.items() if _present(target.split(":")[0])]


def config_class(name: str):
    """The config class of a family: 'latte', 'cogvideox', 'open-sora', 'open-sora-plan'."""
    if name not in FAMILIES or name not in available():
        raise ValueError(f"unknown model {name!r}; choose from {available()}")
    return _load(FAMILIES[name])
