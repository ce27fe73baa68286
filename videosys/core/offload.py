"""The memory mechanisms a config's `offload` / `quantize` turn on, for every family in one place (the engine's
`build_pipeline` calls `apply_memory_settings`); core/planner.py predicts what each saves and picks among them.

- offload="encoders": the text (and image) encoder leaves the device after the text stage.
- offload="model": each part is on the device only during its stage (text encoder, transformer, VAE).
- offload="group": as "model" for the encoders and the VAE; the transformer's blocks stream in one at a time
  (diffusers' `apply_group_offloading`, block level, the next block prefetched on a side stream on CUDA).
- vae_tile_size (with a family's vae_tiling): the VAE's spatial tiles of that height in pixels, the other tiling
  lengths (width, stride, latent tile) scaled with it from the VAE's defaults (diffusers' `enable_tiling` knobs).
- quantize="int8": weight-only int8 Linear layers in the transformer and text encoder (torchao's
  `Int8WeightOnlyConfig`); quantize="fp8": the transformer's weights stored in float8_e4m3fn and cast to the
  compute dtype layer by layer (diffusers' `apply_layerwise_casting`; norms and embeddings stay as they are; the
  text encoder keeps its dtype: transformers' T5 reads weights outside its layers' forward).

Refused combinations (checked when the config is built, before any weight loads):
- offload="model" / "group" with num_gpus > 1: every process would keep a whole host copy of the weights and move
  the same weights over its own PCIe link each step (N x host memory for what one more GPU's memory avoids);
- offload="group" or quantize="fp8" with compile=True: both work by Python hooks around each block / layer that
  change where / in what dtype the weights are between calls, which the compiled regions would break on or
  recompile for every block.
Caches work with all of them (they keep their state on the device: the planner counts it).
"""

import contextlib

import torch

OFFLOADS = ("none", "encoders", "model", "group")
QUANTIZE = ("none", "int8", "fp8")
# which parts each stage runs (pipeline attribute names); "prepare": a request's image / reference conditioning
# (CascadeV: its input video's encoding)
STAGE_PARTS = {"prepare": ("image_encoder", "encoder", "vae"), "text": ("text_encoder", "text_encoder_2"),
               "denoise": ("transformer",), "decode": ("vae",)}


# the parts that stay on the device throughout, per offload (the others move with their stage)
RESIDENT = {"none": ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder", "encoder"),
            "encoders": ("transformer", "vae"), "model": (), "group": ()}


def check_memory_settings(config) -> None:
    """The offload / quantize values and their combinations (module docstring), naming the field."""
    if config.offload not in OFFLOADS:
        raise ValueError(f"offload must be one of {', '.join(OFFLOADS)}, got {config.offload!r}")
    if config.quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}, got {config.quantize!r}")
    if config.offload in ("model", "group") and config.num_gpus > 1:
        raise ValueError(f"offload={config.offload!r} with num_gpus={config.num_gpus}: every process would keep a "
                         "host copy of all the weights and stream them over its own link each step; use "
                         "quantize='int8' / 'fp8' or offload='encoders' with several GPUs")
    if config.compile and (config.offload == "group" or config.quantize == "fp8"):
        what = "offload='group'" if config.offload == "group" else "quantize='fp8'"
        raise ValueError(f"{what} with compile=True: it moves / recasts weights in hooks around every block or "
                         "layer, which the compiled regions break on; drop one of them (quantize='int8' compiles)")
    if config.offload == "group":
        from diffusers.utils import is_accelerate_available

        if not is_accelerate_available():  # diffusers' group offloading moves the inputs with accelerate's helper
            raise ValueError("offload='group' needs accelerate (diffusers' group offloading uses it): "
                             "pip install 'videosys[memory]'")
    if config.vae_tile_size is not None:
        if not getattr(config, "vae_tiling", False):
            raise ValueError(f"vae_tile_size={config.vae_tile_size} needs vae_tiling=True"
                             + ("" if hasattr(config, "vae_tiling") else f" ({config.model_name} has no VAE tiling)"))
        if config.vae_tile_size < 64 or config.vae_tile_size % 64:
            raise ValueError(f"vae_tile_size must be a multiple of 64 pixels, got {config.vae_tile_size}")
    if config.vram is not None:
        from videosys.core.planner import parse_bytes

        parse_bytes(config.vram, "vram")


# diffusers' tiling lengths (pixels or latents) that scale with the tile size; the overlap factors stay
TILE_KNOBS = ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height",
              "tile_sample_stride_width", "tile_latent_min_height", "tile_latent_min_width")
TILE_SIZES = (512, 256, 128)  # tile heights the planner tries besides the VAE's default (each costs a decode run)


def _tile_defaults(vae) -> dict:
    """The VAE's own tiling lengths, kept on first use (set_vae_tile changes them)."""
    if "_videosys_tile_defaults" not in vars(vae):
        import inspect

        knobs = inspect.signature(vae.enable_tiling).parameters
        vae._videosys_tile_defaults = {k: getattr(vae, k) for k in TILE_KNOBS if k in knobs and hasattr(vae, k)}
    return vae._videosys_tile_defaults


def vae_tile_sizes(vae, height: int, width: int, also: int | None = None) -> list[int]:
    """The tile heights a VAE with diffusers' `enable_tiling(tile_sample_min_height=...)` can take for a
    height x width video, largest first: TILE_SIZES, its default and `also`, those that tile this size at all."""
    if not (hasattr(vae, "enable_tiling") and hasattr(vae, "disable_tiling")):
        return []
    d = _tile_defaults(vae)
    if "tile_sample_min_height" not in d:
        return []
    aspect = d.get("tile_sample_min_width", d["tile_sample_min_height"]) / d["tile_sample_min_height"]
    sizes = sorted({*TILE_SIZES, d["tile_sample_min_height"], *([also] if also else [])}, reverse=True)
    return [s for s in sizes if height > s or width > round(s * aspect)]


def set_vae_tile(vae, size: int | None) -> None:
    """Decode in tiles `size` pixels high (the width, strides and latent tile scaled from the VAE's defaults);
    None: whole frames."""
    if size is None:
        vae.disable_tiling()
        return
    d = _tile_defaults(vae)
    scale = size / d["tile_sample_min_height"]
    vae.enable_tiling(**{k: int(round(v * scale)) for k, v in d.items()})


def vae_tile(vae) -> int | None:
    """The tile height the VAE decodes with now (None: untiled)."""
    return getattr(vae, "tile_sample_min_height", None) if getattr(vae, "use_tiling", False) else None


def transformers_of(pipeline) -> tuple:
    """The denoising models (Wan2.2 A14B: both experts)."""
    return tuple(getattr(pipeline, "experts", None) or (pipeline.transformer,))


def quantize(pipeline, mode: str) -> None:
    """Weight-only int8 (torchao: the transformer(s) and the text encoder) or fp8 storage (diffusers' layerwise
    casting: the transformer(s)); the VAE's convolutions keep their dtype (a small part of the weights)."""
    text_encoder = getattr(pipeline, "text_encoder", None)  # CascadeV has none
    modules = [*transformers_of(pipeline), *([text_encoder] if text_encoder is not None else [])]
    for module in modules:  # attention.py's fused q / k / v copy would keep the float weights and bypass the layers
        for m in module.modules():
            if getattr(m, "qkv_fused", None) is not None:
                m.qkv_fused = None
    if mode == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        except ImportError as err:
            raise ValueError("quantize='int8' needs torchao: pip install 'videosys[memory]' (torchao)") from err
        for module in modules:
            quantize_(module, Int8WeightOnlyConfig())
    elif mode == "fp8":  # the transformer(s) only: transformers' T5 reads its weights outside the layers' forward
        from diffusers.hooks import apply_layerwise_casting

        for module in transformers_of(pipeline):
            apply_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=pipeline.dtype)


class Placement:
    """Which parts are on the device in each stage (offload="encoders" / "model" / "group"); a stage hook."""

    def __init__(self, pipeline, offload: str):
        self.pipeline, self.offload = pipeline, offload
        self.active: list[str] = []
        self.streamed = offload == "group"  # the transformer moves itself, block by block
        self.resident = RESIDENT[offload]

    def parts(self, stage: str) -> list:
        """The modules this stage moves onto the device and back (not the resident or self-streaming ones)."""
        names = [n for n in STAGE_PARTS.get(stage, ()) if n not in self.resident]
        if self.streamed:
            names = [n for n in names if n != "transformer"]
        return [m for m in (getattr(self.pipeline, n, None) for n in names) if isinstance(m, torch.nn.Module)]

    def off_device(self) -> None:
        """Every offloaded part on the CPU (at build)."""
        for stage in STAGE_PARTS:
            for module in self.parts(stage):
                module.to("cpu")

    @contextlib.contextmanager
    def __call__(self, stage: str):
        parts = self.parts(stage)
        for module in parts:
            module.to(self.pipeline.device)
        self.active.append(stage)
        try:
            yield
        finally:
            self.active.pop()
            needed = {id(m) for s in self.active for m in self.parts(s)}  # a stage nested in another keeps its parts
            for module in parts:
                if id(module) not in needed:
                    module.to("cpu")


@contextlib.contextmanager
def per_call(pipeline, offload: str, vae_tile_size: int | None):
    """One call with another offload ("none" -> "encoders" / "model": parts moved as a Placement does) and VAE
    tile height than the pipeline was built with (the planner's per-call plan: planner.plan_call); the pipeline
    is set back after."""
    own = pipeline.config.offload
    tile_before = vae_tile(pipeline.vae)
    placement, saved_hooks = None, list(pipeline.stage_hooks)
    if vae_tile_size != tile_before:
        set_vae_tile(pipeline.vae, vae_tile_size)
    if offload != own:
        placement = Placement(pipeline, offload)
        pipeline.stage_hooks[:] = [h for h in saved_hooks if not isinstance(h, Placement)] + [placement]
        placement.off_device()
    try:
        yield
    finally:
        if placement is not None:
            pipeline.stage_hooks[:] = saved_hooks
            for name in RESIDENT[own]:
                module = getattr(pipeline, name, None)
                if isinstance(module, torch.nn.Module):
                    module.to(pipeline.device)
        if vae_tile(pipeline.vae) != tile_before:
            set_vae_tile(pipeline.vae, tile_before)


_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def build_config(config):
    """The config a pipeline is built from: with an offload on a GPU, the CPU (the parts then go onto the device
    only as the plan says: building them all there first is the peak the plan avoids), in the GPU's dtype."""
    if config.offload == "none" or config.torch_device().type == "cpu":
        return config
    import dataclasses

    return dataclasses.replace(config, device="cpu", dtype=_DTYPE_NAMES[config.torch_dtype()])


def apply_memory_settings(pipeline, config=None):
    """The config's quantize and offload on a built pipeline (a no-op with the defaults); returns it. `config`: the
    one the pipeline runs with when it was built from `build_config(config)` (on the CPU)."""
    if config is not None and config is not pipeline.config:
        pipeline.config, pipeline.device = config, config.torch_device()
    config = pipeline.config
    if config.vae_tile_size is not None:
        set_vae_tile(pipeline.vae, config.vae_tile_size)
    if config.quantize != "none":
        quantize(pipeline, config.quantize)
    if config.offload == "none":
        return pipeline
    placement = Placement(pipeline, config.offload)
    placement.off_device()
    for name in placement.resident:  # built on the CPU (build_config): the resident parts go to the device now
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            module.to(pipeline.device)
    if config.offload == "group":
        from diffusers.hooks import apply_group_offloading

        device = pipeline.device
        for model in transformers_of(pipeline):
            model.to("cpu")
            apply_group_offloading(model, onload_device=device, offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1,
                                   use_stream=device.type == "cuda")
    pipeline.stage_hooks.append(placement)
    return pipeline
