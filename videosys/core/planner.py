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
input layout (Replays: tiles and frame chunks repeat it hundreds of times at full size), the decode stage once
per VAE tile height tried. The per-call plan of `engine.generate(vram=...)` is `plan_call`.

    videosys plan --model wan --vram 8GB                      # Wan2.1-T2V-1.3B at 81x480x832
    engine = VideoSysEngine(WanConfig(vram="8GB"))             # applies the plan, or refuses before any compute
"""

import contextlib
import dataclasses
import itertools
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
        entry = self.live.get(storage._cdata)
        if entry is not None and not entry[0].expired():
            return
        if entry is not None:  # a freed storage's address reused before a sweep took it out
            self.current -= entry[1]
        n = storage.nbytes()
        self.live[storage._cdata] = (StorageWeakRef(storage), n)
        self.current += n
        # freed storages only lower the count: sweep them out only when this may be a new peak
        if self.current > min(self.stage_peaks.get(s, 0) for s in self._stages or ("",)) or \
                self.current > self.peak:
            self._sweep()
            self.reach(self.current)

    def reach(self, nbytes: int) -> None:
        """`nbytes` live at once: the peaks of the stages open now and the overall peak rise to it."""
        self.peak = max(self.peak, nbytes)
        for name in self._stages:
            self.stage_peaks[name] = max(self.stage_peaks.get(name, 0), nbytes)

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def live_bytes(self) -> int:
        self._sweep()
        return self.current

    @contextlib.contextmanager
    def window(self, name: str):
        """Track the peak of what runs inside under `name` (stage_peaks[name]), from what is live now."""
        self._sweep()
        self._stages.append(name)
        self.stage_peaks[name] = max(self.stage_peaks.get(name, 0), self.current)
        try:
            yield
        finally:
            self._stages.remove(name)

    def restart(self, name: str) -> None:
        """An open window's peak counted again from now (the same stage run another way)."""
        self._sweep()
        self.stage_peaks[name] = self.current

    @contextlib.contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            with self.window(name):
                yield
        finally:
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start


# ---- repeated calls counted once -------------------------------------------------------------------------------
_CALLS = itertools.count()
_REPLAYS: dict = {}  # (module structure, dtype, the call's input layout) -> what the call did to the count


def _layout(value) -> tuple:
    """What a call's memory depends on: its tensors' shapes / strides / dtypes and its plain values."""
    out = []
    for leaf in tree_leaves(value):
        if isinstance(leaf, torch.Tensor):
            out.append((tuple(leaf.shape), leaf.stride(), leaf.dtype))
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            out.append(leaf)
        else:
            out.append(type(leaf).__qualname__)
    return tuple(out)


def _storages(value) -> set:
    return {t.untyped_storage()._cdata for t in tree_leaves(value) if isinstance(t, torch.Tensor)}


def _specs(value, inputs=()):
    """A call's result as (pytree spec, per leaf: ("input", i) for the i-th input tensor returned, ("tensor",
    storage index, storage bytes, shape, stride, offset, dtype) for a new one (a view keeps its whole storage,
    views of one storage share it), ("value", v) for a plain value)."""
    from torch.utils._pytree import tree_flatten

    leaves, spec = tree_flatten(value)
    out, storages = [], {}
    for t in leaves:
        if not isinstance(t, torch.Tensor):
            out.append(("value", t))
            continue
        same = [i for i, x in enumerate(inputs) if x is t]
        if same:
            out.append(("input", same[0]))
            continue
        storage = t.untyped_storage()
        index = storages.setdefault(storage._cdata, len(storages))
        out.append(("tensor", index, storage.nbytes(), tuple(t.shape), t.stride(), t.storage_offset(), t.dtype))
    return spec, out


def _rebuild(spec, leaves, inputs=()):
    from torch.utils._pytree import tree_unflatten

    storages, values = {}, []
    for leaf in leaves:
        if leaf[0] == "tensor":
            _, index, nbytes, shape, stride, offset, dtype = leaf
            if index not in storages:
                storages[index] = torch.empty(nbytes, dtype=torch.uint8)
            values.append(storages[index].view(dtype).as_strided(shape, stride, offset))
        else:
            values.append(inputs[leaf[1]] if leaf[0] == "input" else leaf[1])
    return tree_unflatten(values, spec)


class Replays:
    """A function on fake tensors run once per input layout (a VAE's decoder called per tile and per frame chunk,
    the tiles' blending: thousands of calls at full size); a later call with the same layout adds what the first
    one did to the count (the peak it reached above what was live, the tensors it returned and the lists / dicts
    it was passed refilled with new ones of the same layouts) without running it. A call that keeps new tensors
    anywhere else (an attribute of its own) runs every time. Recordings are kept for the process, by structure."""

    def __init__(self, counter: ByteCounter):
        self.counter = counter

    def wrap(self, owner, attr: str, structure: str) -> None:
        """Replace `owner.<attr>` (a module's forward, a method) with its replayed version."""
        function = getattr(owner, attr)
        dtype = next((p.dtype for p in owner.parameters()), None) if isinstance(owner, torch.nn.Module) else None

        def call(*args, **kwargs):
            key = (structure, attr, dtype, _layout((args, kwargs)))
            if key in _REPLAYS:
                return self._replay(_REPLAYS[key], args, kwargs)
            out, record = self._record(function, args, kwargs)
            if record is not None:
                _REPLAYS[key] = record
            return out

        setattr(owner, attr, call)

    @staticmethod
    def _containers(args, kwargs) -> list:
        """The lists / dicts passed in (a causal decoder's cache, which it refills)."""
        return [v for v in (*args, *kwargs.values()) if isinstance(v, (list, dict))]

    def _record(self, function, args, kwargs):
        counter = self.counter
        start = counter.live_bytes()
        before = dict(counter.live)  # storage key -> its entry (a key freed and reused gets a new entry)
        name = f"replay {next(_CALLS)}"
        with counter.window(name):
            out = function(*args, **kwargs)
        rise = counter.stage_peaks.pop(name) - start
        containers = self._containers(args, kwargs)
        counter.live_bytes()
        old = {k for k, entry in counter.live.items() if before.get(k) is entry}
        new = set(counter.live) - old
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        spec = _specs(out, inputs)
        if not new <= _storages((out, containers)) or any(
                leaf[0] == "tensor" and k in old for leaf, k in zip(spec[1], self._leaf_keys(out))):
            return out, None  # new tensors kept elsewhere, or an older tensor that is not an input returned
        # each entry of a list / dict passed in: kept as it was (its storage lived before) or its new layout
        filled = []
        for c in containers:
            items = enumerate(c) if isinstance(c, list) else c.items()
            filled.append((type(c), [(k, None if _storages(v) & old else _specs(v)) for k, v in items]))
        return out, (rise, spec, filled)

    @staticmethod
    def _leaf_keys(value) -> list:
        return [t.untyped_storage()._cdata if isinstance(t, torch.Tensor) else None for t in tree_leaves(value)]

    def _replay(self, record, args, kwargs):
        rise, (spec, leaves), filled = record
        counter = self.counter
        counter.reach(counter.live_bytes() + rise)
        for container, (kind, entries) in zip(self._containers(args, kwargs), filled):
            if kind is list:
                del container[len(entries):]
                container.extend([None] * (len(entries) - len(container)))
            for k, entry in entries:  # one at a time: each old entry is freed as its successor is made
                # an entry already of the new layout is left as it is: replacing it changes no count
                if entry is not None and _specs(container[k])[1] != entry[1]:
                    container[k] = _rebuild(*entry)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        return _rebuild(spec, leaves, inputs)


@contextlib.contextmanager
def _masks_without_loops():
    """diffusers' HunyuanVideo-1.5 VAE fills its causal attention mask with a Python loop over every token (49k
    steps a decoder call at 480p): on fake tensors only the mask's allocation counts, so it is made without the
    loop while the planner measures."""
    try:
        from diffusers.models.autoencoders.autoencoder_kl_hunyuanvideo15 import HunyuanVideo15AttnBlock as block
    except ImportError:
        yield
        return
    original = block.__dict__["prepare_causal_attention_mask"]

    def mask(n_frame: int, n_hw: int, dtype, device, batch_size: int | None = None):
        out = torch.full((n_frame * n_hw, n_frame * n_hw), float("-inf"), dtype=dtype, device=device)
        return out if batch_size is None else out.unsqueeze(0).expand(batch_size, -1, -1)

    block.prepare_causal_attention_mask = staticmethod(mask)
    try:
        yield
    finally:
        block.prepare_causal_attention_mask = original


def replay_decoders(vae: torch.nn.Module, counter: ByteCounter) -> None:
    """Every `decoder` module of the VAE (Open-Sora: a temporal and a spatial one) and its tile blending
    (diffusers' blend_v / blend_h / blend_t: a Python loop over the overlap) counted by Replays."""
    import hashlib

    replays = Replays(counter)
    config = getattr(vae, "config", None)
    base = type(vae).__qualname__ + repr(config if config is not None else vae)
    for name, module in vae.named_modules():
        if name.split(".")[-1] == "decoder":
            replays.wrap(module, "forward", hashlib.sha1(f"{base}/{name}".encode()).hexdigest())
    for attr in ("blend_v", "blend_h", "blend_t"):
        if callable(getattr(vae, attr, None)):
            replays.wrap(vae, attr, type(vae).__qualname__)


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
    with _own_process_state(), _masks_without_loops(), _fake_module_apply(), mode, counter, torch.inference_mode():
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
    changes = {k: v for k, v in plan.settings().items() if k in ("offload", "quantize") or hasattr(config, "vae_tiling")}
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
