"""What the command-line entry points share (`videosys generate / reconstruct` in cli.py, `videosys serve` in
serve/cli.py): the config built from their flags. Neither entry point imports the other for it."""


def _frames(value: str):
    """An explicit frame count, or a family's duration name such as Open-Sora's "4s"."""
    return int(value) if value.isdigit() else value


# CLI flag -> config field, for the generation settings every family shares
GENERATION = {"num_frames": _frames, "height": int, "width": int, "num_inference_steps": int,
              "guidance_scale": float, "fps": int}


def make_config(args):
    """The family config from parsed flags: --config's YAML, then the named flags, then each --set FIELD=VALUE."""
    from videosys.models import config_class
    from videosys.utils.files import load_yaml

    values = {}
    if args.config:
        values = load_yaml(args.config)  # a parse error names the file and line
    model = args.model or values.pop("model", None)
    values.pop("model", None)
    if not model:
        raise ValueError("name the model family with --model (or `model:` in the --config file)")
    overrides = {"preset": args.preset, "model_path": args.model_path, "dtype": args.dtype, "device": args.device,
                 "cache": args.cache.split(",") if args.cache and "," in args.cache else args.cache,
                 **{name: getattr(args, name) for name in GENERATION}}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("cache"), str) and values["cache"].startswith("@"):  # a `videosys tune` file
        from videosys.eval.tune import tuned_spec

        values["cache"] = tuned_spec(values["cache"])
    cls = config_class(model)
    for item in args.set:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--set takes FIELD=VALUE, got {item!r}")
        values[field.strip()] = cls.parse_field(field.strip(), raw.strip())  # "high" for a float field: an error
    if args.no_progress:
        values["progress_bar"] = False
    if getattr(args, "compile", False):
        values["compile"] = True
    return cls.from_dict(values)
