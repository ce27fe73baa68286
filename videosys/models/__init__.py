"""The model families, by the name the CLI and YAML files use."""


def config_class(name: str):
    """The config class of a family: 'latte', ..."""
    from videosys.models.latte.pipeline import LatteConfig

    families = {"latte": LatteConfig}
    if name not in families:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(families)}")
    return families[name]
