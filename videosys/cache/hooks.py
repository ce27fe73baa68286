"""Hook points: where a model and the pipeline hand control to the active cache methods.

Three points, under the same names in every family:

- the block stack (`CacheMixin.cache_stack`, in each transformer's forward): a method gets a
  `BlockStack` (the streams, the family's indicator, computed lazily, and `run(start, stop)` over
  the stack's units) and returns the streams after the stack, computed, partly computed or reused.
  TeaCache, MagCache, EasyCache, First-Block-Cache, Skip-Cache and (a UNet's stack) DeepCache act here.
- each module call (`module_call`, in each block): a `Site` (kind: "spatial" / "temporal" /
  "cross" / "full" attention or "mlp"; the block's kind; the block index) and `compute`; a method
  returns compute(), a reused or forecast tensor, or observes. PAB, FasterCache, TaylorSeer, FoCa act here.
- the CFG branch outputs (`cfg_skip` / `cfg_supply` / `cfg_observe`, in the pipeline's loop): a
  method may skip the uncond branch on a step and supply its output from the cond one.
- the step's model output (`step_output`, in the pipeline's loop around the model call(s) of a step): a
  method returns compute() (the prediction, guided with CFG) or supplies it without calling the model
  (a forecast). Whole-model forecasting acts here.

A method's state object subclasses `Cache` and defines the hooks where it acts; the others stay
None and cost nothing. Several methods may be active at once if they act at different points
(`Cache.acts_at`; two that would both replace what one point computes are refused before any compute,
registry.check_combination); observers (acting nowhere) may join any point. At one point the methods
nest in the order they were enabled (the first is outermost: its `run` / `compute` goes through the next).
Per generation the pipeline calls `begin(timesteps, refresh_steps)` (on refresh steps a method computes
everything), per step `set_step(index, timestep)`.

Whose state a call uses (`Site.branch`, `BlockStack.branch`): the CFG branch ("batch" or "cond"), and, where a
pipeline runs one step as several transformer calls over parts of its input (CascadeV: frame windows x latent
tiles), the part too (`with transformer.cache_part(name):`), so a method never adds one part's residual to
another; its counts are then per call. Beside a method that runs the cond branch alone (CFG-Cache), a module method
keeps one state per branch even in a batched call (its rows split [uncond; cond]: `CacheMixin.cfg_row_states`),
and computes (`Cache.refresh`) where that state missed steps or the batched step feeds later cond-only ones
(`CacheMixin.stale_states`); docs/caches/combinations.md.
"""

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch


class Site(NamedTuple):
    """One module call: hashable, so a method can key its per-module state by it."""

    kind: str  # "spatial" | "temporal" | "cross" | "full" (attention) | "mlp"
    block: str  # the kind of the block it sits in: "spatial" | "temporal" | "full"
    index: int  # the block's depth
    branch: str = "batch"  # whose state (see BlockStack.branch and the module docstring)


class Cache:
    """Base of a method's per-transformer state. Subclasses define the hooks they act at."""

    method_name = ""  # set by registry.register

    # block stack: stack(self, stack: BlockStack) -> tuple of streams
    stack: Callable | None = None
    # module call: module(self, site: Site, compute: () -> Tensor) -> Tensor
    module: Callable | None = None
    # CFG: cfg_skip(self) -> bool (skip the uncond branch this step; decided from host values, alike on
    # every rank); cfg_supply(self, cond) -> uncond; cfg_observe(self, uncond, cond) on computed steps
    cfg_skip: Callable | None = None
    cfg_supply: Callable | None = None
    cfg_observe: Callable | None = None
    # cfg_keeps(self) -> bool: whether what cfg_observe sees this (computed) step supplies later cond-only steps
    # (default: it may); module methods beside it then compute every row of the step (CacheMixin.stale_states)
    cfg_keeps: Callable | None = None
    # step output: step_output(self, compute: () -> Tensor, group) -> Tensor (the step's prediction, guided with
    # CFG, whole on every rank; group: the world group); skip compute() to supply it without the model
    step_output: Callable | None = None

    @classmethod
    def acts_at(cls, config) -> frozenset:
        """The hook points ("stack", "module", "cfg", "step_output") where this method, with this config, may
        replace what is computed: by default every point it defines a hook for. A method whose config turns a
        part off narrows it (FasterCache's CFG part alone acts at "cfg" only); an observer returns frozenset()."""
        hooks = {"stack": cls.stack, "module": cls.module, "cfg": cls.cfg_skip, "step_output": cls.step_output}
        return frozenset(point for point, hook in hooks.items() if hook is not None)

    def check_model(self, model) -> None:
        """Called by `enable_cache`: raise for a model the method cannot act on (before any compute)."""

    def begin(self, timesteps: list[float], refresh_steps=()) -> None:
        """A new generation over these (host-side) timesteps: forget the last one. On `refresh_steps` a method
        computes everything (some frames' timestep jumps there: Open-Sora's conditioned frames)."""

    def set_step(self, index: int, timestep: float) -> None:
        """The step about to run."""

    def refresh(self, site: Site, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The module hook on a call whose state (site.branch) missed steps another branch ran
        (CacheMixin.stale_states): compute and keep the output as on a full step. The default is `module`: a
        method without state across steps needs nothing else."""
        return self.module(site, compute)

    def stats(self) -> dict:
        return {}

    def postfix(self) -> str:
        return ""


class StepCache(Cache):
    """A method that computes or reuses whole steps: `computed` and `reused_steps` (step indices) give its
    statistics and progress-bar postfix."""

    def __init__(self, config):
        self.config = config
        self.begin([])

    def begin(self, timesteps, refresh_steps=()) -> None:
        """Forget the last generation: per-branch state, counts, the step; methods extend it."""
        self.num_steps = len(timesteps)
        self.refresh_steps = frozenset(refresh_steps)
        self.step = 0
        self.branches: dict = {}
        self.computed, self.reused_steps = 0, []

    def set_step(self, index: int, timestep: float) -> None:
        self.step = index

    def stats(self) -> dict:
        return {"computed_steps": self.computed, "reused_steps": len(self.reused_steps),
                "reused_step_indices": list(self.reused_steps)}

    def postfix(self) -> str:
        return f"{self.method_name} {len(self.reused_steps)}/{self.computed + len(self.reused_steps)} reused"


@dataclass
class BlockStack:
    """What a model exposes at its block stack for one forward."""

    streams: tuple[torch.Tensor, ...]  # the stack's inputs (CogVideoX: video and text tokens)
    run: Callable  # run(*streams, start=0, stop=None) -> tuple: units start .. stop-1 (a unit = one loop step)
    num_units: int  # Latte / STDiT3: a (spatial, temporal) pair; CogVideoX / OSP v1.2: one block
    group: Any = None  # the world group: reduce distances over it so every rank decides alike
    branch: str = "batch"  # whose state: "batch" ([uncond; cond] or this rank's half), "cond" when run alone
    # (a CFG cache skipped uncond); `group` then holds only the ranks that run it
    indicator_fn: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    # a UNet's stack (LaVie): units 0 .. down_units-1 are the down path, each leaving a skip connection, then the mid
    # unit, then the up units, each taking one skip back, last first; run(start=0) starts a fresh set of skips, so
    # run(h, stop=k) then run(x, start=num_units - k - 1) runs only the U's outer k down and k + 1 up units (DeepCache)
    down_units: int | None = None
    _indicator: torch.Tensor | None = field(default=None, repr=False)

    def indicator(self) -> torch.Tensor:
        """The family's published indicator (TeaCache's; real tokens only), computed on first use."""
        if self._indicator is None:
            self._indicator = self.indicator_fn()
        return self._indicator

    def first(self, *streams) -> tuple:
        """The first unit only."""
        return self.run(*streams, start=0, stop=1)

    def rest(self, *streams) -> tuple:
        """Every unit after the first."""
        return self.run(*streams, start=1)


class ModuleHooks:
    """The module-call methods of one transformer, outermost first. `branches[k]`: the state names method k keeps
    for this call's rows, one per equal part of the batch (dim 0): (branch,) by default; ("uncond", "cond") for a
    batched [uncond; cond] call where another method may run the cond branch alone (CacheMixin.module_hooks)."""

    def __init__(self, methods: list, branch: str = "batch", branches: list[tuple[str, ...]] | None = None,
                 stale: frozenset = frozenset()):
        self.methods, self.branch = methods, branch
        self.branches = branches or [(branch,)] * len(methods)
        self.stale = stale  # state names that missed a step another branch ran: they compute (Cache.refresh)

    def __call__(self, site: Site, compute: Callable[[], torch.Tensor], k: int = 0) -> torch.Tensor:
        inner = compute if k == len(self.methods) - 1 else (lambda: self(site, compute, k + 1))
        names = self.branches[k]
        if len(names) == 1:
            return self.hook(k, names[0])(site._replace(branch=names[0]), inner)
        return self._by_rows(k, site, inner, names)

    def hook(self, k: int, name: str) -> Callable:
        return self.methods[k].refresh if name in self.stale else self.methods[k].module

    def _by_rows(self, k: int, site: Site, compute: Callable[[], torch.Tensor], names: tuple[str, ...]):
        """Method k on each part of the call's rows under its own state name, the call computed at most once (for
        every part): a part continues from its own history whichever calls ran it alone."""
        memo = []

        def part(i: int) -> Callable[[], torch.Tensor]:
            def compute_part() -> torch.Tensor:
                if not memo:
                    full = compute()
                    memo.extend([full, *full.chunk(len(names))])
                return memo[1 + i]
            return compute_part

        outs = [self.hook(k, name)(site._replace(branch=name), part(i)) for i, name in enumerate(names)]
        if memo and all(out is view for out, view in zip(outs, memo[1:])):
            return memo[0]  # every part computed: the call's own output, no copy
        return torch.cat(outs)


def module_call(hooks: ModuleHooks | None, kind: str, index: int, compute: Callable[[], torch.Tensor],
                block: str | None = None) -> torch.Tensor:
    """compute(), or what the active methods make of this call. `block` defaults to `kind`."""
    if hooks is None:
        return compute()
    return hooks(Site(kind, block or kind, index, hooks.branch), compute)


CFG_BRANCHES = ("uncond", "cond")  # the order of a guided batch's rows and of the CFG-parallel ranks


def acts_at(cache: Cache) -> frozenset:
    """The hook points where an active method may replace what is computed (Cache.acts_at of its config)."""
    return type(cache).acts_at(getattr(cache, "config", None))


def _as_tuple(out) -> tuple:
    return out if isinstance(out, tuple) else (out,)


class CacheMixin:
    """Cache state of a transformer instance: `enable_cache(config)`, `disable_cache()` (the diffusers
    convention); the model's forward calls `cache_stack` and passes `module_hooks()` to its blocks."""

    cache_branch = "batch"  # set by the pipeline around a call that runs one CFG branch alone
    cache_part_name = ""  # set by `cache_part` around a call that runs one part of a step's input
    guided = True  # False: its pipeline runs no CFG branches, so the CFG-branch hooks never fire (check_model refuses)

    @property
    def caches(self) -> dict:
        """Active methods by name, in the order they were enabled."""
        if "_caches" not in self.__dict__:
            self.__dict__["_caches"] = {}
        return self.__dict__["_caches"]

    def enable_cache(self, config) -> None:
        """Turn a method on (replacing the same method's earlier state)."""
        from videosys.cache.registry import check_combination, method_of

        method = method_of(config)
        check_combination([c.config for n, c in self.caches.items() if n != method.name] + [config])
        state = method.cache_cls(config)
        state.check_model(self)
        self.caches.pop(method.name, None)
        self.caches[method.name] = state

    def disable_cache(self) -> None:
        self.caches.clear()

    def active_cache(self, name: str):
        """The state of method `name`, None when it is off."""
        return self.caches.get(name)

    @contextlib.contextmanager
    def cache_part(self, name: str):
        """Calls inside use the state of part `name` of the step's input (one of several calls per step)."""
        self.cache_part_name = name
        try:
            yield
        finally:
            self.cache_part_name = ""

    @property
    def cache_state(self) -> str:
        """The state key of the current call: the CFG branch, prefixed by the part where one is named."""
        return f"{self.cache_part_name}/{self.cache_branch}" if self.cache_part_name else self.cache_branch

    # ---- hook points ----------------------------------------------------------------------------
    def module_hooks(self) -> ModuleHooks | None:
        methods = [c for c in self.caches.values() if c.module is not None]
        if not methods:
            return None
        branches = [self.cfg_row_states(m) for m in methods]
        return ModuleHooks(methods, self.cache_state, branches, self.stale_states({n for b in branches for n in b}))

    def stale_states(self, names: set) -> frozenset:
        """Of the state names this call uses, those whose methods compute this call (Cache.refresh) rather than
        extrapolate or reuse: every row of a batched step whose branches a CFG cache keeps to supply the next
        cond-only steps (an error there is held, and amplified by the guidance, over all of them), and otherwise
        an uncond state that missed a cond-only step since its last call (its outputs would be extrapolated over
        steps the schedule never meant to span). Measured on the demo model: docs/caches/combinations.md. Host
        values only (the skip decisions, alike on every rank)."""
        last = self.__dict__.setdefault("cfg_last_run", {})  # state name -> the last step it ran
        step = self.__dict__.get("cache_step_index", 0)
        cond_only = self.__dict__.get("cfg_last_cond_only", -1)
        if self.cache_branch == "batch" and any(self.cfg_kept(c) for c in self.caches.values()):
            stale = frozenset(names)
        else:
            stale = frozenset(n for n in names if n.endswith(CFG_BRANCHES[0]) and last.get(n, cond_only) < cond_only)
        last.update(dict.fromkeys(names, step))
        return stale

    @staticmethod
    def cfg_kept(cache: Cache) -> bool:
        if cache.cfg_observe is None or "cfg" not in acts_at(cache):
            return False
        return cache.cfg_keeps() if cache.cfg_keeps is not None else True

    def cfg_row_states(self, method: Cache) -> tuple[str, ...]:
        """The state names `method` keeps for this call's rows. Where another active method may run the cond branch
        alone (CFG-Cache) in this guided generation, a module method keeps one state per branch: a batched call's
        rows [uncond; cond] as ("uncond", "cond") (a CFG-parallel rank's as its own branch), a cond-only call's as
        "cond", so that call continues from the cond rows of the last batched call and the next batched call from
        each branch's own last call (spacing by the step indices each branch computed). Otherwise (the call's
        branch,): unchanged."""
        others = [c for c in self.caches.values() if c is not method and "cfg" in acts_at(c)]
        if not (others and self.__dict__.get("cfg_guided")):
            return (self.cache_state,)
        prefix = f"{self.cache_part_name}/" if self.cache_part_name else ""
        if self.cache_branch != "batch":
            return (prefix + self.cache_branch,)
        if self.parallel.cfg_size == 2:
            return (prefix + CFG_BRANCHES[self.parallel.cfg_rank],)
        return tuple(prefix + name for name in CFG_BRANCHES)

    def cache_stack(self, run: Callable, *streams: torch.Tensor, indicator: Callable[[], torch.Tensor],
                    num_units: int, down_units: int | None = None):
        """The block stack through the active stack methods. `run(*streams, start=0, stop=None)` runs
        units start .. stop-1 and returns the streams (one tensor or a tuple, as given). `down_units`: a UNet's
        (BlockStack.down_units)."""
        methods = [c for c in self.caches.values() if c.stack is not None]
        if not methods:
            return run(*streams)
        memo = {}
        # every rank runs this call, except when one CFG branch runs alone: then only the ranks of its sp group
        group = self.parallel.world_group if self.cache_branch == "batch" else self.parallel.sp_group

        def lazy_indicator():
            if "value" not in memo:
                memo["value"] = indicator()
            return memo["value"]

        def through(k: int, inputs: tuple) -> tuple:
            if k == len(methods):
                return _as_tuple(run(*inputs))

            def run_k(*s, start: int = 0, stop: int | None = None) -> tuple:
                if start == 0 and (stop is None or stop >= num_units):
                    return through(k + 1, s)  # the whole stack: through the inner methods
                return _as_tuple(run(*s, start=start, stop=stop))

            stack = BlockStack(inputs, run_k, num_units, group, self.cache_state, lazy_indicator, down_units)
            return _as_tuple(methods[k].stack(stack))

        out = through(0, streams)
        return out[0] if len(streams) == 1 else out

    # ---- per generation / step, reporting -------------------------------------------------------
    def begin_generation(self) -> None:
        """The model's own per-generation hook (cache_begin calls it first): a model that keeps state across the
        steps of one generation forgets it here (models/modules/text_memo.TextMemoMixin: the text memos)."""

    def cache_begin(self, timesteps: list[float], refresh_steps=()) -> None:
        """A new generation; on `refresh_steps` every method computes. The model's begin_generation runs first."""
        self.begin_generation()
        self.__dict__["cfg_guided"] = False  # set by the first guided step (cache_cfg_skipper)
        self.__dict__["cfg_last_run"], self.__dict__["cfg_last_cond_only"] = {}, -1
        for cache in self.caches.values():
            cache.begin(timesteps, refresh_steps=tuple(refresh_steps))

    def cache_step(self, index: int, timestep: float) -> None:
        self.__dict__["cache_step_index"] = index
        for cache in self.caches.values():
            cache.set_step(index, timestep)

    def cache_stats(self) -> dict:
        return {name: cache.stats() for name, cache in self.caches.items()}

    def cache_postfix(self) -> str:
        return ", ".join(p for p in (c.postfix() for c in self.caches.values()) if p)

    # ---- step output point (the pipeline's loop) --------------------------------------------------
    def cache_output(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """compute() through the active output methods, the first enabled outermost."""
        methods = [c for c in self.caches.values() if c.step_output is not None]
        group = self.parallel.world_group

        def through(k: int) -> torch.Tensor:
            return compute() if k == len(methods) else methods[k].step_output(lambda: through(k + 1), group)

        return through(0)

    # ---- CFG branch point (the pipeline's loop) ---------------------------------------------------
    def cache_cfg_skipper(self):
        """The first active method that skips the uncond branch this step (it then supplies it), else None. Called
        on every guided step, before its model call: from here on the batched calls are [uncond; cond]."""
        self.__dict__["cfg_guided"] = True
        for cache in self.caches.values():
            if cache.cfg_skip is not None and cache.cfg_skip():
                self.__dict__["cfg_last_cond_only"] = self.__dict__.get("cache_step_index", 0)
                return cache
        return None

    def cache_cfg_observe(self, uncond: torch.Tensor, cond: torch.Tensor) -> None:
        for cache in self.caches.values():
            if cache.cfg_observe is not None:
                cache.cfg_observe(uncond, cond)
