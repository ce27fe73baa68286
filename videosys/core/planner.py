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
is kept as long as it can be), and a "nothing masked?" test takes the masked path.

    videosys plan --model wan --vram 8GB                      # Wan2.1-T2V-1.3B at 81x480x832
    engine = VideoSysEngine(WanConfig(vram="8GB"))             # applies the plan, or refuses before any compute
"""

import contextlib
import dataclasses
import math
import re
import time
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


# ---- the byte counter ------------------------------------------------------------------------------------------
_HOST_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default,
               torch.ops.aten.is_nonzero.default)


SMALL_FACTORY = 2 ** 16  # elements: a tensor made from nothing this small is host bookkeeping (masks, positions)


def _small_factory(func, args) -> bool:
    """A factory op (ones, zeros, full, arange ...: no tensor inputs) of a known small size: run for real, so host
    decisions on it (a mask's longest row) see real values. Large ones stay fake (no memory is used)."""
    size = args[0] if args else None
    if isinstance(size, (list, tuple)) and all(isinstance(n, int) for n in size):
        return math.prod(size) <= SMALL_FACTORY
    return isinstance(size, (int, float)) and func.__name__.startswith("arange") and size <= SMALL_FACTORY


class ByteCounter(TorchDispatchMode):
    """Live bytes of the tensors created by ops while it is active (a storage counts once, until it is freed), and
    the peak of each stage marked with `stage(name)`. Inside a FakeTensorMode: ops whose tensors are all real run
    for real (host-side code), a host read of a fake value returns 0."""

    def __init__(self):
        super().__init__()
        self.live: dict = {}
        self.current = self.peak = 0
        self.stage_peaks: dict[str, int] = {}
        self.stage_seconds: dict[str, float] = {}  # the planner's own time per stage (what to speed up)
        self._stages: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

        kwargs = kwargs or {}
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        fake = any(isinstance(t, FakeTensor) for t in tensors)
        if func in _HOST_READS and fake:  # a value the host reads: 0 / False (the general, masked path)
            return False if func is torch.ops.aten.is_nonzero.default or args[0].dtype == torch.bool else 0
        if (tensors and not fake) or (not tensors and _small_factory(func, args)):
            with unset_fake_temporarily():
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out

    def _add(self, t: torch.Tensor) -> None:
        from torch.multiprocessing.reductions import StorageWeakRef

        storage = t.untyped_storage()
        if storage._cdata not in self.live:
            n = storage.nbytes()
            self.live[storage._cdata] = (StorageWeakRef(storage), n)
            self.current += n
            # freed storages only lower the count: sweep them out only when this may be a new peak
            if self.current > min(self.stage_peaks.get(s, 0) for s in self._stages or ("",)) or \
                    self.current > self.peak:
                self._sweep()
                self.peak = max(self.peak, self.current)
                for name in self._stages:
                    self.stage_peaks[name] = max(self.stage_peaks.get(name, 0), self.current)

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    @contextlib.contextmanager
    def stage(self, name: str):
        self._sweep()
        self._stages.append(name)
        self.stage_peaks[name] = max(self.stage_peaks.get(name, 0), self.current)
        start = time.perf_counter()
        try:
            yield
        finally:
            self._stages.remove(name)
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start


# ---- fake full-size pipelines ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _fake_module_apply():
    """nn.Module.to / float / ... on fake parameters: each replaced by its converted copy (torch's own _apply would
    swap tensors, which fake tensors refuse). A module's own _apply override still runs (attention.py re-fuses
    its q / k / v buffer there); tied parameters stay tied."""
    original = torch.nn.Module._apply
    done: list[dict] = []  # the outermost call's converted parameters, by id

    def apply(self, fn, recurse=True):
        outermost = not done
        if outermost:
            done.append({})
        try:
            if recurse:
                for child in self.children():
                    child._apply(fn)
            for key, p in self._parameters.items():
                if p is not None:
                    if id(p) not in done[0]:
                        new = fn(p)
                        done[0][id(p)] = (p, p if new is p else torch.nn.Parameter(new, requires_grad=False))
                    self._parameters[key] = done[0][id(p)][1]
            for key, b in self._buffers.items():
                if b is not None:
                    self._buffers[key] = fn(b)
        finally:
            if outermost:
                done.clear()
        return self

    torch.nn.Module._apply = apply
    try:
        yield
    finally:
        torch.nn.Module._apply = original


@contextlib.contextmanager
def _own_process_state():
    """The process-wide stores a forward fills (videosys/__init__.py lists them) kept apart from the fake run: fake
    tensors left there would reach the next real generation."""
    from videosys.cache import fastercache
    from videosys.models.modules import embeddings

    saved = dict(embeddings._TABLES)
    embeddings._TABLES.clear()
    try:
        yield
    finally:
        embeddings._TABLES.clear()
        embeddings._TABLES.update(saved)
        fastercache._low_pass_mask.cache_clear()


def fakeify(module: torch.nn.Module, mode, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """`module` with every parameter and buffer a fake CPU tensor (real or meta ones converted; floating ones in
    `dtype` when given). Call inside `_fake_module_apply`."""
    def convert(t):
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if t.is_meta:
            return mode.fake_tensor_converter.from_meta_and_device(mode, t, torch.device("cpu"))
        return mode.from_tensor(t)

    return module._apply(convert)


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


def fake_pipeline(config):
    """The family's pipeline with fake parameters: presets (small) built as usual and converted, releases from the
    family's `architecture(config)` hook (the parts at full size on the meta device, no weights read)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cls = config.pipeline_cls
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    dtype = config.torch_dtype()
    if config.preset is not None or not hasattr(cls, "architecture"):
        if config.preset is None:
            raise ValueError(f"the planner has no architecture for {config.model_name} releases yet (the family's "
                             "pipeline needs an `architecture(config)` hook); presets work")
        pipeline = cls.from_config(config)
        with _fake_module_apply():
            for value in list(vars(pipeline).values()):
                if isinstance(value, torch.nn.Module):
                    fakeify(value, mode)
        return pipeline, mode
    with torch.device("meta"):
        parts = cls.architecture(config)
    with _fake_module_apply():
        for value in parts.values():
            if isinstance(value, torch.nn.Module):
                fakeify(value, mode, dtype)
        return cls.from_config(config, parts=parts), mode


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
    weights, the caches' state and what is carried between stages included), decode with and without tiling."""

    parts: dict[str, Weights]
    stages: dict[str, int]
    dtype_size: int
    tiling: bool  # the VAE can decode in tiles (stages["decode_tiled"] is measured)
    seconds: float
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


PART_NAMES = ("text_encoder", "text_encoder_2", "image_encoder", "transformer", "vae")


def measure(config, request: dict | None = None) -> Measurement:
    """Weights and per-stage activation peaks of `config` for a generate() request (None: the config's sizes)."""
    start = time.perf_counter()
    config = planning_config(config)
    values = dict(request or {})
    steps = values.get("num_inference_steps") or config.num_inference_steps or PLAN_STEPS
    # every step needs the same activations; only a cache's state (and a multistep scheduler's) builds up
    values["num_inference_steps"] = min(steps, PLAN_STEPS if config.cache_configs() else 2)
    with warnings.catch_warnings():  # a memo comparing data pointers (text_memo.py) meets fake tensors: harmless
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        return _measure(config, values, start)


def _measure(config, values: dict, start: float) -> Measurement:
    pipeline, mode = fake_pipeline(config)
    parts = {}
    for name in PART_NAMES:
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            parts[name] = Weights.of(module) if name != "transformer" else _sum_weights(transformers_of(pipeline))
    counter = ByteCounter()
    pipeline.stage_hooks.append(counter.stage)
    pipeline.check_finite = lambda latents: None  # a host read of fake values
    vae = pipeline.vae
    # a family whose config has vae_tiling can switch it (the plan sets the field)
    tiling = hasattr(config, "vae_tiling") and hasattr(vae, "enable_tiling") and hasattr(vae, "disable_tiling")
    stages = {}
    with _own_process_state(), _fake_module_apply(), mode, counter, torch.inference_mode():
        out = pipeline.generate("a red circle moving to the right", **_generate_args(pipeline, values))
        del out
        stages.update(counter.stage_peaks)
        if tiling:  # the decode stage again, the other way
            was_tiled = bool(getattr(vae, "use_tiling", False))
            vae.disable_tiling() if was_tiled else vae.enable_tiling()
            latents = torch.zeros(_latent_shape(pipeline, values), dtype=torch.float32)
            counter.stage_peaks.pop("decode", None)
            with counter.stage("decode"):
                pipeline.decode(latents.to(pipeline.dtype))
            other = counter.stage_peaks["decode"]
            stages["decode"], stages["decode_tiled"] = ((other, stages["decode"]) if was_tiled
                                                        else (stages["decode"], other))
    return Measurement(parts, stages, torch.tensor([], dtype=pipeline.dtype).element_size(), tiling,
                       time.perf_counter() - start, dict(counter.stage_seconds))


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


def _latent_shape(pipeline, values: dict):
    from videosys.core.pipeline import GenerationRun

    checked = pipeline.config.check_request(values)
    run = GenerationRun(prompts=["x"], values=checked, seed=0, generator=torch.Generator(), do_cfg=False, start=0.0)
    return pipeline.latent_shape(run)


# ---- plans -----------------------------------------------------------------------------------------------------
# what each choice costs (in time or quality), to rank the plans that fit: the cheapest wins, the smaller peak
# on a tie. Moving the encoders / the VAE once per generation costs little; int8 costs a little quality; fp8
# storage more; group offload moves every block every step.
OFFLOAD_COST = {"none": 0, "encoders": 1, "model": 2, "group": 6}
QUANTIZE_COST = {"none": 0, "int8": 3, "fp8": 4}
TILING_COST = 1
QUANTIZED_PARTS = {"int8": ("transformer", "text_encoder"), "fp8": ("transformer",), "none": ()}  # offload.quantize


@dataclasses.dataclass(frozen=True)
class Plan:
    offload: str = "none"
    quantize: str = "none"
    vae_tiling: bool = False

    @property
    def cost(self) -> int:
        return OFFLOAD_COST[self.offload] + QUANTIZE_COST[self.quantize] + TILING_COST * self.vae_tiling

    def describe(self) -> str:
        words = {"none": "all resident", "encoders": "encoders off the device after use",
                 "model": "model offload", "group": "group offload of the transformer blocks"}
        out = [words[self.offload]]
        if self.quantize != "none":
            out.append(f"{self.quantize} weights")
        if self.vae_tiling:
            out.append("VAE tiling")
        return " + ".join(out)

    def settings(self) -> dict:
        return {"offload": self.offload, "quantize": self.quantize, "vae_tiling": self.vae_tiling}


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
        acts = m.stages["decode_tiled"] if stage == "decode" and plan.vae_tiling else m.stages[stage]
        out[stage] = (weights, acts)
    return out


def peak(m: Measurement, plan: Plan) -> int:
    return max(w + a for w, a in stage_peaks(m, plan).values())


def candidate_plans(m: Measurement) -> list[Plan]:
    tilings = (False, True) if m.tiling else (False,)
    plans = [Plan(o, q, t) for o in OFFLOAD_COST for q in QUANTIZE_COST for t in tilings]
    return sorted(plans, key=lambda p: (p.cost, peak(m, p)))


def config_plan(config) -> Plan:
    return Plan(config.offload, config.quantize, bool(getattr(config, "vae_tiling", False)))


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
        return min(candidate_plans(self.measurement), key=lambda p: (peak(self.measurement, p), p.cost))

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


def choose(config, request: dict | None = None, budget: int | None = None) -> Choice:
    """The cheapest plan whose predicted peak fits `budget` bytes (default: the config's vram)."""
    if budget is None and config.vram is not None:
        budget = parse_bytes(config.vram)
    m = _measure_cached(config, request)
    fitting = [p for p in candidate_plans(m) if budget is None or peak(m, p) <= budget]
    plan = fitting[0] if fitting and budget is not None else (config_plan(config) if budget is None else None)
    return Choice(budget, m, plan, config_plan(config))


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
    return peak(m, config_plan(config))


def apply_plan(config):
    """For a config with `vram`: (the config with the cheapest fitting plan's settings, the Choice); a ValueError
    naming vram, before any weight loads, when nothing fits."""
    choice = choose(config)
    if not choice.fits:
        raise ValueError(f"vram={config.vram!r}: {choice.refusal()}")
    changes = {k: v for k, v in choice.plan.settings().items() if k != "vae_tiling" or hasattr(config, "vae_tiling")}
    return dataclasses.replace(config, **changes), choice


SIZE_FIELDS = ("num_frames", "height", "width")


def check_fits(config, request: dict) -> None:
    """A generate() request of another size than the config's, against the config's vram with its plan: a
    RequestError naming vram when it would not fit (measured once per size)."""
    from videosys.core.config import RequestError

    sizes = {k: request[k] for k in SIZE_FIELDS if request.get(k) is not None and request[k] != getattr(config, k)}
    if not sizes:
        return
    budget, need = parse_bytes(config.vram), estimate_peak_bytes(config, sizes)
    if need > budget:
        shown = "x".join(str(request.get(k) or getattr(config, k)) for k in SIZE_FIELDS)
        raise RequestError("vram", f"{shown} needs {gb(need)} with {config_plan(config).describe()}, over "
                           f"vram={config.vram!r}; build the engine for this size (its plan follows it)")


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
    if m.tiling:
        lines.append(f"{'(decode, tiled)':<10}{gb(m.stages['decode_tiled']):>14}")
    lines += ["", choice.summary() if choice.budget is not None else
              f"peak {gb(peak(m, choice.config_plan))} ({choice.config_plan.describe()})",
              f"(measured in {m.seconds:.1f} s on fake tensors: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in m.stage_seconds.items()) + ")"]
    return "\n".join(lines)
