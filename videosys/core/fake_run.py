"""Counting what a pipeline's run holds in memory, on fake tensors (no storage, no weights): the byte counter
(a dispatch mode adding up each tensor an op creates until it is freed), the replay of repeated VAE calls, and the
family's full-size pipeline with fake parameters. core/planner.py measures each stage with them."""

import contextlib
import itertools
import math
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


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
MAX_REPLAYS = 4096  # recordings kept (a full-size plan makes about a hundred)
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
                if len(_REPLAYS) >= MAX_REPLAYS:  # a long-lived engine planning many sizes: the oldest go
                    _REPLAYS.pop(next(iter(_REPLAYS)))
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
def masks_without_loops():
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
def fake_module_apply():
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
def own_process_state():
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
    `dtype` when given). Call inside `fake_module_apply`."""
    def convert(t):
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        if t.is_meta:
            return mode.fake_tensor_converter.from_meta_and_device(mode, t, torch.device("cpu"))
        return mode.from_tensor(t)

    return module._apply(convert)


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
        with fake_module_apply():
            for value in list(vars(pipeline).values()):
                if isinstance(value, torch.nn.Module):
                    fakeify(value, mode)
        return pipeline, mode
    with torch.device("meta"):
        parts = cls.architecture(config)
    with fake_module_apply():
        for value in parts.values():
            if isinstance(value, torch.nn.Module):
                fakeify(value, mode, dtype)
        return cls.from_config(config, parts=parts), mode
