"""The memory planner: each stage's peak device memory for a config and request, predicted on a CPU in seconds
without weights, and the cheapest plan (offload / weight quantization / VAE tiling: core/offload.py) that fits.

How: the family builds its pipeline at full size with its parameters as fake tensors (FakeTensorMode: shapes and
dtypes, no storage; the family's `architecture` hook gives the modules on the meta device), and the pipeline's
own generate flow runs on them (a short schedule) under a dispatch-mode byte counter that adds up every tensor
each op creates and drops it when it is freed: the activations, the caches' state and the text / latents carried
between stages are measured on the real graph, not written as formulas. Weights are counted from the parameters
(bytes by dtype; the Linear weights int8 / fp8 would shrink; the largest block, which group offload keeps
resident). Host code on real tensors (the tokenizer's masks, the scheduler's tables) runs for real; a value read
from a fake tensor on the host reads as 0 / False: a cache's distance is 0, so it reuses wherever it may (its state
is kept as long as it can be), and a "nothing masked?" test takes the masked path. A VAE's decoder runs once per
input layout (fake_run.Replays: tiles and frame chunks repeat it hundreds of times at full size), the decode stage once
per VAE tile height tried. The per-call plan of `engine.generate(vram=...)` is `plan_call`.

    videosys plan --model wan --vram 8GB                      # Wan2.1-T2V-1.3B at 81x480x832
    engine = VideoSysEngine(WanConfig(vram="8GB"))             # applies the plan, or refuses before any compute
"""

import contextlib
import dataclasses
import re
import time
import warnings

import torch

from videosys.core.fake_run import (ByteCounter, fake_module_apply, masks_without_loops, own_process_state,
                                    fake_pipeline, replay_decoders)
from videosys.core.offload import RESIDENT, STAGE_PARTS, transformers_of

GIB = 2 ** 30
PLAN_STEPS = 6  # steps of the schedule the planner runs: enough for every cache's state to fill up
STAGES = ("prepare", "text", "denoise", "decode")


def parse_bytes(text, field: str = "vram") -> int:
    """"24GB" / "24 GiB" / "24" (GiB, as a card reports its memory) / "512MB" -> bytes; a ValueError naming field."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([GgMm]i?[Bb]?)?\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{field} must be a size such as '24GB' or '512MB' (GiB / MiB), got {text!r}")
    unit = (match.group(2) or "G")[0].upper()
    return int(float(match.group(1)) * (GIB if unit == "G" else 2 ** 20))


def gb(n: float) -> str:
    """Bytes as GB (GiB) from 0.1 GB up, else as MB (MiB): the tiny presets' figures stay readable."""
    return f"{n / GIB:.2f} GB" if n >= GIB / 10 else f"{n / 2 ** 20:.2f} MB"


def planning_config(config):
    """The config the planner measures: the device's dtype (bf16 / the family's, not the CPU's fp32), one process,
    the mechanisms off (the planner adds their effect itself)."""
    dtype = config.dtype
    if dtype == "auto":  # what "auto" means on a GPU, asked of the family (CogVideoX-2b: fp16)
        with _pretend_cuda():
            dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[config.torch_dtype()]
    return dataclasses.replace(config, dtype=dtype, device="cpu", num_gpus=1, cfg_parallel=False, compile=False,
                               progress_bar=False, vram=None, offload="none", quantize="none")


@contextlib.contextmanager
def _pretend_cuda():
    real = torch.cuda.is_available
    torch.cuda.is_available = lambda: True
    try:
        yield
    finally:
        torch.cuda.is_available = real


# ---- measuring -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Weights:
    """One part's parameters: bytes as stored, the Linear weights' bytes and rows (what int8 / fp8 shrink), and
    the largest of its blocks (what group offload keeps on the device, twice with prefetch)."""

    bytes: int = 0
    linear_bytes: int = 0
    linear_numel: int = 0
    linear_rows: int = 0
    largest_block: int = 0
    blocks: int = 0  # bytes in the ModuleLists' blocks (group offload streams them)
    largest_layer: int = 0
    numel: int = 0

    @classmethod
    def of(cls, module: torch.nn.Module) -> "Weights":
        w = cls()
        seen, seen_lists = set(), []  # a ModuleList inside a block is not a block list of its own
        for p in list(module.parameters()) + list(module.buffers()):
            if id(p) not in seen:
                seen.add(id(p))
                w.bytes += p.numel() * p.element_size()
                w.numel += p.numel() if isinstance(p, torch.nn.Parameter) else 0
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                w.linear_bytes += m.weight.numel() * m.weight.element_size()
                w.linear_numel += m.weight.numel()
                w.linear_rows += m.weight.shape[0]
                w.largest_layer = max(w.largest_layer, m.weight.numel() * m.weight.element_size())
            if isinstance(m, torch.nn.ModuleList) and not any(m in s for s in seen_lists):
                seen_lists.append(set(m.modules()))
                for block in m:
                    size = sum(p.numel() * p.element_size() for p in block.parameters())
                    w.largest_block, w.blocks = max(w.largest_block, size), w.blocks + size
        return w

    def quantized(self, mode: str, dtype_size: int) -> int:
        """Bytes with weight-only int8 (1 byte a weight + a scale per row) or fp8 storage (1 byte a weight; a layer
        at a time is cast up: `largest_layer`)."""
        if mode == "int8":
            return self.bytes - self.linear_bytes + self.linear_numel + self.linear_rows * dtype_size
        if mode == "fp8":
            return self.bytes - self.linear_bytes + self.linear_numel + self.largest_layer
        return self.bytes


@dataclasses.dataclass
class Measurement:
    """What a config and request need: each part's weights, each stage's activations (live bytes beyond the
    weights, the caches' state and what is carried between stages included; "decode" untiled), and the decode
    stage's with each VAE tile height the VAE can take (largest first)."""

    parts: dict[str, Weights]
    stages: dict[str, int]
    dtype_size: int
    tiles: dict[int, int]  # tile height (pixels) -> the decode stage's activations with it
    configured_tile: int | None  # the tile the config decodes with (None: whole frames)
    seconds: float
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def tiling(self) -> bool:
        return bool(self.tiles)


PART_NAMES = ("text_encoder", "text_encoder_2", "image_encoder", "encoder", "transformer", "vae")


def measure(config, request: dict | None = None, replay: bool = True) -> Measurement:
    """Weights and per-stage activation peaks of `config` for a generate() request (None: the config's sizes).
    replay=False runs every VAE decoder call (minutes at full size; what Replays is checked against)."""
    start = time.perf_counter()
    config = planning_config(config)
    values = dict(request or {})
    steps = values.get("num_inference_steps") or config.num_inference_steps or PLAN_STEPS
    # every step needs the same activations; only a cache's state (and a multistep scheduler's) builds up
    values["num_inference_steps"] = min(steps, PLAN_STEPS if config.cache_configs() else 2)
    import gc

    enabled = gc.isenabled()
    gc.collect()  # tensors in reference cycles freed when the collector runs: not mid-count (the same figure
    gc.disable()  # every time; an upper bound, as a real run's collector may free them earlier)
    try:
        with warnings.catch_warnings():  # a memo comparing data pointers (text_memo.py) meets fake tensors
            warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
            return _measure(config, values, start, replay)
    finally:
        if enabled:
            gc.enable()


def _measure(config, values: dict, start: float, replay: bool) -> Measurement:
    from videosys.core.offload import set_vae_tile, vae_tile, vae_tile_sizes

    pipeline, mode = fake_pipeline(config)
    parts = {}
    for name in PART_NAMES:
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            parts[name] = Weights.of(module) if name != "transformer" else _sum_weights(transformers_of(pipeline))
    counter = ByteCounter()
    pipeline.stage_hooks.append(counter.stage)
    pipeline.check_finite = lambda latents: None  # a host read of fake values
    pipeline.check_memory = lambda values, batch: None  # the host's free memory is not the question
    vae = pipeline.vae
    if replay:
        replay_decoders(vae, counter)
    if config.vae_tile_size is not None:
        set_vae_tile(vae, config.vae_tile_size)
    # a family whose config has vae_tiling can switch it and its tile size (the plan sets the fields)
    sizes = []
    if hasattr(config, "vae_tiling"):
        run_values = config.check_request(values)
        sizes = vae_tile_sizes(vae, run_values["height"], run_values["width"], also=vae_tile(vae))
    configured = vae_tile(vae) if vae_tile(vae) in sizes else None
    decodes: dict = {}
    autoencoder = hasattr(pipeline, "plan_input")  # a video autoencoder (CascadeV): reconstruct() a blank clip
    decode = pipeline.decode if autoencoder else pipeline.decode_video

    def decode_each_way(*args):
        """The decode stage once per tiling (whole frames, then each tile height), each from the same state."""
        before, out = vae_tile(vae), None
        for tile in [None, *sizes]:
            out = None  # the previous way's video freed first
            if sizes:
                set_vae_tile(vae, tile)
            counter.restart("decode")
            out = decode(*args)
            decodes[tile] = counter.stage_peaks["decode"]
        if sizes:
            set_vae_tile(vae, before)
        return out

    setattr(pipeline, "decode" if autoencoder else "decode_video", decode_each_way)
    with own_process_state(), masks_without_loops(), fake_module_apply(), mode, counter, torch.inference_mode():
        if autoencoder:
            out = pipeline.reconstruct(pipeline.plan_input(values), num_inference_steps=values["num_inference_steps"])
        else:
            out = pipeline.generate("a red circle moving to the right", **_generate_args(pipeline, values))
        del out
    stages = dict(counter.stage_peaks)
    stages["decode"] = decodes[None]
    return Measurement(parts, stages, torch.tensor([], dtype=pipeline.dtype).element_size(),
                       {t: decodes[t] for t in sizes}, configured, time.perf_counter() - start,
                       dict(counter.stage_seconds))


def _sum_weights(models) -> Weights:
    out = Weights()
    for model in models:
        w = Weights.of(model)
        for f in dataclasses.fields(Weights):
            combine = max if f.name.startswith("largest") else (lambda a, b: a + b)
            setattr(out, f.name, combine(getattr(out, f.name), getattr(w, f.name)))
    return out


def _generate_args(pipeline, values: dict) -> dict:
    import inspect

    allowed = inspect.signature(pipeline.generate).parameters
    return {k: v for k, v in values.items() if k in allowed and v is not None}


# ---- plans -----------------------------------------------------------------------------------------------------
# what each choice costs (in time or quality), to rank the plans that fit: the cheapest wins, the smaller peak
# on a tie. Moving the encoders / the VAE once per generation costs little; VAE tiles a little decode time, more
# the smaller they are (more overlap decoded twice); int8 costs a little quality; fp8 storage more; group offload
# moves every block every step.
OFFLOAD_COST = {"none": 0, "encoders": 1, "model": 2, "group": 6}
QUANTIZE_COST = {"none": 0, "int8": 3, "fp8": 4}
TILING_COST, SMALLER_TILE_COST = 1.0, 0.1  # tiling, and each step down the tile heights (all under model offload)
QUANTIZED_PARTS = {"int8": ("transformer", "text_encoder"), "fp8": ("transformer",), "none": ()}  # offload.quantize


@dataclasses.dataclass(frozen=True)
class Plan:
    offload: str = "none"
    quantize: str = "none"
    vae_tile: int | None = None  # the VAE's tile height in pixels; None: whole frames

    def describe(self) -> str:
        words = {"none": "all resident", "encoders": "encoders off the device after use",
                 "model": "model offload", "group": "group offload of the transformer blocks"}
        out = [words[self.offload]]
        if self.quantize != "none":
            out.append(f"{self.quantize} weights")
        if self.vae_tile is not None:
            out.append(f"VAE tiles of {self.vae_tile} px")
        return " + ".join(out)

    def settings(self) -> dict:
        """The config fields that set this plan up."""
        return {"offload": self.offload, "quantize": self.quantize, "vae_tiling": self.vae_tile is not None,
                "vae_tile_size": self.vae_tile}


def cost(m: Measurement, plan: Plan) -> float:
    tiling = 0.0
    if plan.vae_tile is not None:
        tiling = TILING_COST + SMALLER_TILE_COST * list(m.tiles).index(plan.vae_tile)
    return OFFLOAD_COST[plan.offload] + QUANTIZE_COST[plan.quantize] + tiling


def part_weights(m: Measurement, plan: Plan, name: str, streamed: bool = False) -> int:
    w = m.parts[name]
    total = w.quantized(plan.quantize, m.dtype_size) if name in QUANTIZED_PARTS[plan.quantize] else w.bytes
    if streamed:  # the blocks come one at a time, the next prefetched: two on the device
        scale = total / w.bytes if w.bytes else 1.0
        total -= int((w.blocks - 2 * w.largest_block) * scale)
    return total


def stage_peaks(m: Measurement, plan: Plan) -> dict[str, tuple[int, int]]:
    """Stage -> (weights on the device, activations) under `plan`."""
    out = {}
    for stage in STAGES:
        if stage not in m.stages:
            continue
        names = [n for n in m.parts if n in STAGE_PARTS[stage] or n in RESIDENT[plan.offload]]
        weights = sum(part_weights(m, plan, n, streamed=plan.offload == "group" and n == "transformer")
                      for n in names)
        acts = m.tiles[plan.vae_tile] if stage == "decode" and plan.vae_tile is not None else m.stages[stage]
        out[stage] = (weights, acts)
    return out


def peak(m: Measurement, plan: Plan) -> int:
    return max(w + a for w, a in stage_peaks(m, plan).values())


def candidate_plans(m: Measurement) -> list[Plan]:
    """Every plan, cheapest first (the smaller peak first on a tie)."""
    plans = [Plan(o, q, t) for o in OFFLOAD_COST for q in QUANTIZE_COST for t in (None, *m.tiles)]
    return sorted(plans, key=lambda p: (cost(m, p), peak(m, p)))


def config_plan(config, m: Measurement) -> Plan:
    """The plan a config sets up (its VAE tile as measured: vae_tile_size or the VAE's default, None where the
    tile is not smaller than the video)."""
    return Plan(config.offload, config.quantize, m.configured_tile)


@dataclasses.dataclass
class Choice:
    """The planner's answer for a budget: the plan (None: nothing fits) and the measurement behind it."""

    budget: int | None
    measurement: Measurement
    plan: Plan | None
    config_plan: Plan

    @property
    def fits(self) -> bool:
        return self.plan is not None

    def smallest(self) -> Plan:
        m = self.measurement
        return min(candidate_plans(m), key=lambda p: (peak(m, p), cost(m, p)))

    def refusal(self) -> str:
        m, small = self.measurement, self.smallest()
        need = peak(m, self.config_plan)
        return (f"needs {gb(need)} ({self.config_plan.describe()}); nothing fits {gb(self.budget)}: the smallest "
                f"plan, {small.describe()}, needs {gb(peak(m, small))} (a smaller size, fewer frames or a "
                f"larger card would fit)")

    def summary(self) -> str:
        m = self.measurement
        if self.plan is None:
            return self.refusal()
        base = peak(m, Plan())
        if self.plan == Plan():
            return f"fits {gb(self.budget)} all resident (peak {gb(base)})"
        return (f"needs {gb(base)} all resident; fits {gb(self.budget)} with {self.plan.describe()} "
                f"(peak {gb(peak(m, self.plan))})")


def choose(config, request: dict | None = None, budget: int | None = None, plans=None) -> Choice:
    """The cheapest plan (of `plans`, default all) whose predicted peak fits `budget` bytes (default: the
    config's vram); no budget: the config's own plan."""
    if budget is None and config.vram is not None:
        budget = parse_bytes(config.vram)
    m = _measure_cached(config, request)
    own = config_plan(config, m)
    if budget is None:
        return Choice(None, m, own, own)
    fitting = [p for p in candidate_plans(m) if (plans is None or p in plans) and peak(m, p) <= budget]
    return Choice(budget, m, fitting[0] if fitting else None, own)


def _key(config, request) -> str:
    import json

    return json.dumps([type(config).__name__, config.to_dict(), request or {}], sort_keys=True, default=str)


_MEASURED: dict[str, Measurement] = {}  # a config and request measured once per process (an engine checks each call)


def _measure_cached(config, request) -> Measurement:
    key = _key(config, request)
    if key not in _MEASURED:
        if len(_MEASURED) >= 32:
            _MEASURED.pop(next(iter(_MEASURED)))
        _MEASURED[key] = measure(config, request)
    return _MEASURED[key]


def estimate_peak_bytes(config, request: dict | None = None) -> int:
    """The predicted peak device memory of a generate() request (None: the config's sizes) with the config's own
    offload / quantize / VAE tiling: the largest stage's weights on the device plus its activations."""
    m = _measure_cached(config, request)
    return peak(m, config_plan(config, m))


def plan_config(config, plan: Plan):
    """`config` set up for `plan` (its offload / quantize / VAE tiling fields)."""
    tiling = hasattr(config, "vae_tiling")  # the families without VAE tiling have no such fields
    changes = {k: v for k, v in plan.settings().items() if k in ("offload", "quantize") or tiling}
    return dataclasses.replace(config, **changes)


def apply_plan(config):
    """For a config with `vram`: (the config with the cheapest fitting plan's settings, the Choice); a ValueError
    naming vram, before any weight loads, when nothing fits."""
    choice = choose(config)
    if not choice.fits:
        raise ValueError(f"vram={config.vram!r}: {choice.refusal()}")
    return plan_config(config, choice.plan), choice


# a generate() call's values that change its memory (the measurement runs with them)
REQUEST_FIELDS = ("num_frames", "height", "width", "guidance_scale", "num_inference_steps")
PER_CALL_OFFLOADS = ("none", "encoders", "model")  # Placement moves whole parts: switchable between calls


def plan_call(config, request: dict, vram, per_call_offload: bool = True) -> Plan | None:
    """The plan for one generate() call of an engine set up by `config` within `vram`: None if the engine's own
    plan fits; else the cheapest that fits and can be applied for this call alone (VAE tiles; with
    per_call_offload, more of the parts off the device, as offload "encoders" / "model"); else a RequestError
    before any compute, naming the config field to set when a plan the engine cannot switch to would fit
    (quantize, group offload), or with the plan table when nothing fits."""
    from videosys.core.config import RequestError

    try:
        budget = parse_bytes(vram)
    except ValueError as err:
        raise RequestError("vram", str(err)) from None
    request = {k: request[k] for k in REQUEST_FIELDS  # the config's own values: its measurement, cached
               if request.get(k) is not None and request[k] != getattr(config, k, None)}
    m = _measure_cached(config, request or None)
    own = config_plan(config, m)
    if peak(m, own) <= budget:
        return None
    offloads = [own.offload]
    if per_call_offload and own.offload in PER_CALL_OFFLOADS:
        offloads = list(PER_CALL_OFFLOADS[PER_CALL_OFFLOADS.index(own.offload):])
    switchable = [Plan(o, own.quantize, t) for o in offloads for t in (None, *m.tiles)]
    choice = choose(config, request, budget, plans=switchable)
    if choice.fits:
        return choice.plan
    best = choose(config, request, budget)
    shown = "x".join(str(request.get(k) or getattr(config, k)) for k in SIZE_FIELDS)
    if not best.fits:
        raise RequestError("vram", f"vram={vram!r}: {shown} {best.refusal()}\n{table(best)}")
    fields = {k: getattr(best.plan, k) for k in ("quantize", "offload") if getattr(best.plan, k) != getattr(own, k)}
    if best.plan.offload in offloads:  # switchable for a call: not a field to set
        fields.pop("offload", None)
    fields = fields or {"vram": vram}
    setting = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    raise RequestError(next(iter(fields)), f"vram={vram!r}: {shown} fits with {best.plan.describe()} "
                       f"({gb(peak(m, best.plan))}), which this engine cannot switch to for one call: build it with "
                       f"{setting} (or vram={vram!r} and this size)")


SIZE_FIELDS = ("num_frames", "height", "width")


def table(choice: Choice) -> str:
    """The per-part weights and per-stage peaks (all resident, and under the chosen plan), as text."""
    m = choice.measurement
    lines = [f"{'part':<14}{'params':>10}{'weights':>12}{'int8':>12}{'fp8':>12}"]
    for name, w in m.parts.items():
        cells = [gb(w.quantized(q, m.dtype_size)) if name in QUANTIZED_PARTS[q] else "-" for q in ("int8", "fp8")]
        lines.append(f"{name:<14}{w.numel / 1e6:>9.1f}M{gb(w.bytes):>12}{cells[0]:>12}{cells[1]:>12}")
    plans = [("all resident", Plan())]
    if choice.plan is not None and choice.plan != Plan():
        plans.append(("plan", choice.plan))
    header = f"{'stage':<10}{'activations':>14}" + "".join(f"{label + ' peak':>26}" for label, _ in plans)
    lines += ["", header]
    rows = {label: stage_peaks(m, plan) for label, plan in plans}
    for stage in rows["all resident"]:
        acts = rows["all resident"][stage][1]
        cells = "".join(f"{gb(sum(rows[label][stage])):>26}" for label, _ in plans)
        lines.append(f"{stage:<10}{gb(acts):>14}{cells}")
    for tile, acts in m.tiles.items():  # the decode stage with each VAE tile height
        lines.append(f"{'  tiles ' + str(tile) + ' px':<16}{gb(acts):>8}"
                     + "".join(f"{gb(stage_peaks(m, dataclasses.replace(plan, vae_tile=tile))['decode'][0] + acts):>26}"
                               for _, plan in plans))
    lines += ["", choice.summary() if choice.budget is not None else
              f"peak {gb(peak(m, choice.config_plan))} ({choice.config_plan.describe()})",
              f"(measured in {m.seconds:.1f} s on fake tensors: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in m.stage_seconds.items()) + ")"]
    return "\n".join(lines)
