"""VideoSysPipeline: what every family's pipeline shares, generate() included.

A family pipeline builds its components (official or tiny) and supplies the hooks the one
`generate` calls (see "the family's hooks" below): its prompt handling, `encode_prompt`, the
latents' shape (or its own first latents), the schedule, `predict`, `step` and `decode`; Open-Sora
also its loop over clips (`sample_video`). The request checks are the config's
(`BaseConfig.check_request`: they run without weights, so the engine and the server run them too).
This base holds what is the same everywhere: the request's flow, the one denoising / CFG loop (with
CFG parallelism and the caches' CFG-branch hook point), seeded noise, FreeInit's runs, the progress
bar and the conversion to frames.
"""

import contextlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any
from functools import partial

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from videosys.core import comm
from videosys.core.config import check_prompt, check_seeds
from videosys.core.memory import check_fits
from videosys.core.parallel import ParallelState
from videosys.utils.caller import user_stacklevel


class NonFiniteError(RuntimeError):
    """The denoising produced NaN / inf: the video would come out black (or garbage), so none is made."""


@dataclass
class VideoSysOutput:
    video: torch.Tensor  # (B, T, H, W, 3) uint8; out.video[0] is one clip (empty on ranks > 0: rank 0 decodes)
    stats: dict = field(default_factory=dict)  # timings and, with caches, what was computed / reused
    latents: torch.Tensor | None = None  # the final latents (CPU, fp32), for exact comparisons


@dataclass
class GenerationRun:
    """One generate() call's state, from its checked request to the decoded video (the hooks read it)."""

    prompts: list[str]  # the texts the model encodes (the family's prompt handling applied)
    values: dict  # the request resolved and checked (BaseConfig.check_request): num_frames, height, ...
    seed: int
    generator: torch.Generator  # CPU, seeded: the first noise, then the family's further draws (same on every device)
    do_cfg: bool
    start: float  # time.perf_counter() at the call's start
    text: tuple = ()  # encode_prompt's conditioning, laid out [uncond; cond] with CFG
    conditioning: Any = None  # a family's further conditioning (Open-Sora's references and loop)
    timesteps: torch.Tensor | None = None  # this sampling run's schedule (CPU: the scheduler indexes its tables)
    model_timesteps: torch.Tensor | None = None  # the same, on the device (what the transformer sees)
    state: dict = field(default_factory=dict)  # a family's per-sampling-run state (DPM's previous x0, ...)
    denoise_start: float = 0.0
    steps: int = 0  # model steps taken (the stats' "steps")
    seeds: list[int] = field(default_factory=list)  # one per prompt when generate() got a list of seeds

    def noise(self, shape) -> torch.Tensor:
        """The first noise (CPU, fp32): from the run's generator, or with a seed per prompt each prompt's
        slice from its own seed, drawn as a single run of that prompt would draw it (a batch of jobs
        reproduces each job alone)."""
        if len(self.seeds) <= 1:
            return torch.randn(shape, generator=self.generator, dtype=torch.float32)
        one = (1, *shape[1:])
        return torch.cat([torch.randn(one, generator=self.generator if i == 0 else
                                      torch.Generator("cpu").manual_seed(s), dtype=torch.float32)
                          for i, s in enumerate(self.seeds)])

    @property
    def negative_prompt(self) -> str:
        return self.values["negative_prompt"]

    @property
    def guidance_scale(self) -> float:
        return self.values["guidance_scale"]


class VideoSysPipeline:
    components = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    pipeline_class_name = ""  # model_index.json's "_class_name"
    step_callback = None  # fn(steps_done, total) after each denoising step (a server's progress); may raise to stop
    # generate(prompts, seed=[...]) reproduces each prompt's single run: the first noise is the only random draw
    # (a family whose sampler or conditioning draws more from run.generator leaves this False)
    per_sample_seeds = False

    @classmethod
    def takes_seed_lists(cls, config) -> bool:
        """Whether generate(prompts, seed=[...]) reproduces each prompt's single run under `config` (FreeInit
        draws fresh noise from the one seed)."""
        return cls.per_sample_seeds and config.freeinit_config() is None
    progress_label = ""  # shown beside the progress bar's name (FreeInit's run)
    denoised_steps = 0  # steps of the last run of `denoise`
    progress_name = ""  # the progress bar's name
    frame_dim = 2  # where the latents keep their frames: (B, C, T, H, W); FreeInit filters over them

    def __init__(self, config, transformer, vae, text_encoder, tokenizer, scheduler):
        self.config = config
        self.device = config.torch_device()
        self.dtype = config.torch_dtype()
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.parallel = ParallelState()
        self.run_stats: dict = {}  # what the sampler adds to out.stats (FreeInit's runs), per pipeline
        self.stage_hooks: list = []  # fn(stage name) -> context manager, entered around each stage (`stage`)

    @classmethod
    def assemble(cls, config, transformer, vae, text_encoder, tokenizer, scheduler):
        """The pipeline from built components: modules on the config's device and dtype, caches on, the
        transformer's blocks compiled with compile=True."""
        device, dtype = config.torch_device(), config.torch_dtype()
        modules = [m.to(device) if m.dtype == dtype else m.to(device=device, dtype=dtype)
                   for m in (transformer, vae, text_encoder)]
        pipeline = cls(config, *modules, tokenizer, scheduler)
        pipeline.enable_configured_caches()
        if config.compile:
            from videosys.models.modules.compile import compile_regions

            compile_regions(pipeline.transformer)
        return pipeline

    def set_parallel(self, state: ParallelState) -> None:
        """Join a (cfg, sp) mesh: the transformer shards its sequence over sp, the branches split over cfg."""
        self.parallel = state
        self.transformer.set_parallel(state)

    def set_cache(self, cache) -> None:
        """Replace the transformer's caches: a name, a cache config, or a list (see videosys.cache)."""
        configs = self.config.resolve_cache(cache)  # a bad spec fails before anything changes
        self.transformer.disable_cache()
        for config in configs:
            self.transformer.enable_cache(config)

    # ---- inputs --------------------------------------------------------------------------
    def as_prompt_list(self, prompt, name: str = "prompt") -> list[str]:
        prompts = check_prompt(prompt, name)
        vocabulary = self.config.prompt_vocabulary()
        unknown = sorted({w for p in prompts for w in re.findall(r"[a-z]+", p.lower())} - vocabulary) if vocabulary \
            else []
        if unknown:
            warnings.warn(f"this model knows only the words of its training captions ({', '.join(sorted(vocabulary))}),"
                          f" not {', '.join(map(repr, unknown))}: the video follows the known words alone (try e.g. "
                          "\"a red circle moving to the right\")", stacklevel=user_stacklevel())
        return prompts

    # ---- generation: one flow, the family's hooks -------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompt, negative_prompt: str | None = None, seed: int = 0, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None) -> VideoSysOutput:
        """Videos for `prompt` (a string or a list): (B, T, H, W, 3) uint8 in `.video`.

        None takes the config's value (published or preset defaults); negative_prompt=None is the model's
        default negative prompt ("" unless its release publishes one). A family with more request fields
        overrides this with its signature (the server builds its request model from it) and calls
        `run_generation`.
        """
        return self.run_generation(prompt, seed, dict(
            negative_prompt=negative_prompt, num_frames=num_frames, height=height, width=width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale))

    def generate_planned(self, plan: dict, *args, **kwargs) -> VideoSysOutput:
        """generate() with a memory plan for this call alone (`plan`: offload and vae_tile_size; the engine's
        generate(vram=...) picks it: core/planner.py plan_call), the pipeline set back after."""
        from videosys.core.offload import per_call

        with per_call(self, plan["offload"], plan["vae_tile_size"]):
            return self.generate(*args, **kwargs)

    def run_generation(self, prompt, seed: int, request: dict) -> VideoSysOutput:
        """A generation: checks (before any compute), text, first latents, sampling, decoding."""
        prompts = self.as_prompt_list(prompt)
        seeds = check_seeds(seed, len(prompts), self.takes_seed_lists(self.config))
        values = self.config.check_request(request)
        self.check_memory(values, len(prompts))
        run = GenerationRun(prompts=self.prepare_prompts(prompts), values=values, seed=seeds[0],
                            generator=torch.Generator("cpu").manual_seed(seeds[0]),
                            do_cfg=values["guidance_scale"] > 1.0, start=time.perf_counter(), seeds=seeds)
        with self.stage("prepare"):
            self.prepare_run(run, prompt)
        with self.stage("text"):
            text = self.encode_prompt(run.prompts, run.negative_prompt, run.do_cfg)
        run.text = text if isinstance(text, tuple) else (text,)  # one tensor: CogVideoX's states
        latents = self.initial_latents(run)
        run.denoise_start = time.perf_counter()
        with self.stage("denoise"):
            latents = self.sample_video(run, latents)
        return self.finish(latents, partial(self.in_stage, "decode", self.decode_video, run), run.start,
                           run.denoise_start, run.steps)

    @contextlib.contextmanager
    def stage(self, name: str):
        """A generation's stage: "prepare" (a request's image / references), "text" (encoding), "denoise" (the
        steps) or "decode" (the VAE). The memory plan (core/offload.py) puts the parts a stage needs on the device
        here and takes them off after; the planner (core/planner.py) marks its per-stage peaks here. Stages may
        nest (Open-Sora encodes inside its loop)."""
        with contextlib.ExitStack() as stack:
            for hook in self.stage_hooks:
                stack.enter_context(hook(name))
            yield

    def in_stage(self, name: str, fn, *args):
        with self.stage(name):
            return fn(*args)

    # The family's hooks. A family implements encode_prompt, latent_shape, predict and decode; the others'
    # defaults fit a diffusers scheduler over (B, C, T, h, w) latents (a family overrides what differs).
    def prepare_prompts(self, prompts: list[str]) -> list[str]:
        """The texts the model encodes (a release's prompt template)."""
        return prompts

    def prepare_run(self, run: GenerationRun, prompt) -> None:
        """What a family checks or loads before any compute (Open-Sora: its references)."""

    def encode_prompt(self, prompts: list[str], negative_prompt: str, do_cfg: bool):
        """The text conditioning, laid out [uncond; cond] with CFG: a tensor or a tuple of tensors / None,
        which `predict` receives after (model_in, i, t)."""
        raise NotImplementedError

    def latent_shape(self, run: GenerationRun) -> tuple[int, ...]:
        """The shape of the first latents (from run.values and the loaded VAE / transformer)."""
        raise NotImplementedError

    def initial_latents(self, run: GenerationRun) -> torch.Tensor:
        """Noise from the run's generator (CPU, fp32) scaled to where the scheduler starts."""
        return (run.noise(self.latent_shape(run)).to(self.device) * self.scheduler.init_noise_sigma).to(self.dtype)

    def sample_video(self, run: GenerationRun, latents: torch.Tensor) -> torch.Tensor:
        """The clean latents: the sampler (once, or FreeInit's runs) over `sampling_run`."""
        latents = self.sample(latents, partial(self.sampling_run, run), run.values["num_inference_steps"], run.seed,
                              self.frame_dim)
        run.steps = self.denoised_steps
        return latents

    def sampling_run(self, run: GenerationRun, latents: torch.Tensor, num_steps: int) -> torch.Tensor:
        """One sampling run of `num_steps` through the shared loop."""
        timesteps = self.begin_sampling(run, num_steps)
        return self.denoise(latents, timesteps, partial(self.predict, run), partial(self.step, run), run.text,
                            run.do_cfg, self.guidance_scales(run), self.progress_name,
                            self.cache_timesteps(run))

    def begin_sampling(self, run: GenerationRun, num_steps: int) -> torch.Tensor:
        """Set the schedule of a sampling run (and the family's per-run state); return its timesteps."""
        self.scheduler.set_timesteps(num_steps)
        run.timesteps = self.scheduler.timesteps  # CPU: the scheduler indexes its tables without a device sync
        run.model_timesteps = run.timesteps.to(self.device)  # copied once per run
        return run.timesteps

    def guidance_scales(self, run: GenerationRun):
        """The CFG scale: one, or one per step."""
        return run.guidance_scale

    def cache_timesteps(self, run: GenerationRun) -> torch.Tensor | None:
        """The timesteps the caches see, in the form their published tables use (None: run.timesteps)."""
        return None

    def predict(self, run: GenerationRun, model_in: torch.Tensor, i: int, t, *conditioning) -> torch.Tensor:
        """The model's prediction for `model_in` at step i (shaped like it)."""
        raise NotImplementedError

    def step(self, run: GenerationRun, pred: torch.Tensor, i: int, t, latents: torch.Tensor) -> torch.Tensor:
        """The next latents."""
        return self.scheduler.step(pred, t, latents, return_dict=False)[0]

    def decode_video(self, run: GenerationRun, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents -> (B, T, H, W, 3) uint8."""
        return self.decode(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents -> (B, T, H, W, 3) uint8 (VideoSysPipeline.to_frames on the VAE's pixels)."""
        raise NotImplementedError

    # ---- noise and the loop --------------------------------------------------------------
    def progress(self, total: int, desc: str):
        desc = f"{desc} ({self.progress_label})" if self.progress_label else desc
        return tqdm(total=total, desc=desc, disable=not self.config.progress_bar, leave=False)

    def sample(self, latents: torch.Tensor, run, num_steps: int, seed: int, frame_dim: int = 2) -> torch.Tensor:
        """The family's sampler, `run(latents, num_steps) -> clean latents`, with the config's FreeInit
        (core/freeinit.py: the sampler runs several times, the noise's low frequencies re-initialised
        between runs) or once. `frame_dim`: where the latents keep their frames ((B, C, T, H, W): 2)."""
        from videosys.core import freeinit

        self.run_stats = {}  # this generation's: a FreeInit run fills it
        return freeinit.sample(self, latents, run, num_steps, seed, frame_dim)

    def denoise_steps(self, timesteps: torch.Tensor, desc: str, refresh_steps=()):
        """Yield (index, timestep) over a CPU timestep tensor, keeping the caches and the progress bar in step.

        The caches plan the generation from the whole schedule and learn each step's index and
        value from here: host-side numbers, so no device sync. On `refresh_steps` every cache
        computes (a conditioned frame's timestep jumps there: Open-Sora's edited reference frames).
        """
        values = [float(t) for t in timesteps]
        self.transformer.cache_begin(values, refresh_steps)
        watch = self.watch_finite(len(values))
        with self.progress(len(values), desc) as bar, watch as step:
            for i, t in enumerate(timesteps):
                step[0] = i
                self.transformer.cache_step(i, values[i])
                yield i, t
                bar.update()
                if self.step_callback is not None:
                    self.step_callback(i + 1, len(values))
                postfix = self.transformer.cache_postfix()
                if postfix:
                    bar.set_postfix_str(postfix, refresh=False)

    @contextlib.contextmanager
    def watch_finite(self, steps: int):
        """Record, on the device, the first step whose transformer output holds NaN / inf (read once, in finish).

        A forward hook adds one isfinite-all reduction per call and a device-side `where`; nothing goes to
        the host inside the loop. Yields a one-item list the loop keeps at the current step index.
        """
        step = [0]
        indices = torch.arange(steps, device=self.device)
        self.first_non_finite = torch.full((), -1, dtype=indices.dtype, device=self.device)
        self.non_finite_of = steps

        def hook(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor):
                first = self.first_non_finite
                self.first_non_finite = torch.where((first < 0) & ~torch.isfinite(out).all(), indices[step[0]], first)

        handle = self.transformer.register_forward_hook(hook)
        try:
            yield step
        finally:
            handle.remove()

    def check_memory(self, values: dict, batch: int) -> None:
        """A size that cannot fit the memory here: refused before any compute (core/memory.py; the planner's
        fake full-size pipelines skip it: they hold no memory)."""
        check_fits(self.config, values, self.transformer, batch, self.device)

    def check_finite(self, latents: torch.Tensor) -> None:
        """Raise NonFiniteError naming the first step with NaN / inf (one host read, after the loop)."""
        first = getattr(self, "first_non_finite", None)
        bad_step = -1 if first is None else int(first)
        if bad_step < 0 and bool(torch.isfinite(latents).all()):
            return
        where = (f"the transformer's output at denoising step {bad_step} (of {self.non_finite_of}, counting from 0)"
                 if bad_step >= 0 else "the final latents (a scheduler step made them)")
        raise NonFiniteError(f"non-finite values (NaN / inf) first appear in {where}; the video would be black, so "
                             "none was written. Likely causes: NaN weights in the checkpoint, or fp16 overflowing "
                             "(try dtype='bf16' or 'fp32')")

    def enable_configured_caches(self) -> None:
        for cache in self.config.cache_configs():
            self.transformer.enable_cache(cache)

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, predict, step, conditioning: tuple = (),
                do_cfg: bool = False, guidance=1.0, desc: str = "", cache_timesteps: torch.Tensor | None = None,
                before_step=None, refresh_steps=()):
        """The denoising loop of every family.

        timesteps: one per step (what predict / step get as t); the caches see the values of the CPU tensor
        `cache_timesteps` (default: timesteps), the form the methods' published tables use. predict(model_in, i, t, *conditioning)
        -> the model's prediction for `model_in` (shaped like it); step(pred, i, t, latents) -> the next latents.
        conditioning: tensors (or None) laid out [uncond; cond] with CFG; guidance: one scale or one per step.
        before_step(i, t, latents) -> latents, if given, edits the latents before the model sees them (Open-Sora's
        conditioned frames); on `refresh_steps` every cache computes.
        With CFG each step is guided (`guided_prediction`); cond and uncond run in one batch, or one per
        rank of the cfg group with CFG parallelism.
        """
        self.denoised_steps = len(timesteps)  # model steps of this run (PNDM's warm-up makes them more than asked)
        scales = list(guidance) if isinstance(guidance, (list, tuple)) else [guidance] * len(timesteps)
        split_cfg = do_cfg and self.cfg_parallel
        local = tuple(self.branch(c) for c in conditioning) if split_cfg else tuple(conditioning)
        self._pred_dtype = None
        cache_values = timesteps if cache_timesteps is None else cache_timesteps
        for i, _ in self.denoise_steps(cache_values, desc, refresh_steps=refresh_steps):
            t = timesteps[i]
            if before_step is not None:
                latents = before_step(i, t, latents)
            if do_cfg:
                compute = partial(self.guided_prediction, predict, latents, i, t, conditioning, local, scales[i])
            else:
                compute = partial(predict, latents, i, t, *conditioning)
            pred = self.transformer.cache_output(compute)  # a cache may supply it without the model (a forecast)
            latents = step(pred, i, t, latents)
        return latents

    def guided_prediction(self, predict, latents, i, t, conditioning: tuple, local: tuple, scale: float):
        """uncond + scale * (cond - uncond), through the caches' CFG-branch hook point: a method may skip the
        uncond branch on this step and supply it from the cond one (cfg_skip / cfg_supply), and sees both
        outputs on the steps that compute them (cfg_observe). The decision is taken from host values, alike
        on every rank; with CFG parallelism the uncond rank then skips its forward (and its sp collectives)."""
        transformer = self.transformer
        skipper = transformer.cache_cfg_skipper()
        if skipper is not None:
            cond = self.cond_prediction(predict, latents, i, t, conditioning)
            uncond = skipper.cfg_supply(cond)
        else:
            model_in = latents if self.cfg_parallel else torch.cat([latents, latents])
            pred = predict(model_in, i, t, *local)
            self._pred_dtype = pred.dtype
            uncond, cond = self.gather_branches(pred).chunk(2)
            transformer.cache_cfg_observe(uncond, cond)
        return uncond + scale * (cond - uncond)

    def cond_prediction(self, predict, latents, i, t, conditioning: tuple) -> torch.Tensor:
        """The cond branch alone (state kept as the caches' "cond" branch). CFG parallel: the cond rank runs it
        and every rank of the cfg group receives it through one all-gather that every rank joins."""
        cond_only = tuple(None if c is None else c.chunk(2)[1] for c in conditioning)
        self.transformer.cache_branch = "cond"
        try:
            if not self.cfg_parallel:
                return predict(latents, i, t, *cond_only)
            if self.parallel.cfg_rank == 1:
                cond = predict(latents, i, t, *cond_only)
            else:
                if self._pred_dtype is None:
                    raise RuntimeError("a CFG cache skipped the uncond branch before any step computed both")
                cond = torch.zeros(latents.shape, dtype=self._pred_dtype, device=latents.device)
            return self.gather_branches(cond).chunk(2)[1]
        finally:
            self.transformer.cache_branch = "batch"

    # ---- CFG parallelism: rank 0 of the cfg group runs uncond, rank 1 cond ----------------------
    @property
    def cfg_parallel(self) -> bool:
        return self.parallel.cfg_size == 2

    def branch(self, batch: torch.Tensor | None) -> torch.Tensor | None:
        """This rank's half of an [uncond; cond] batch (all of it without CFG parallelism)."""
        if batch is None or not self.cfg_parallel:
            return batch
        return batch.chunk(2)[self.parallel.cfg_rank]

    def gather_branches(self, pred: torch.Tensor) -> torch.Tensor:
        """Every rank's branch output, laid out [uncond; cond] again."""
        return comm.gather(pred, 0, self.parallel.cfg_group) if self.cfg_parallel else pred

    def finish(self, latents: torch.Tensor, decode, start: float, denoise_start: float, steps: int) -> VideoSysOutput:
        """Decode (on rank 0 only: every rank holds the same latents) and package a generation: timings (one
        device sync, after the loop) and cache stats."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.check_finite(latents)
        decode_start = time.perf_counter()
        if dist.is_initialized() and dist.get_rank() != 0:
            video = torch.zeros((latents.shape[0], 0, 0, 0, 3), dtype=torch.uint8)
        else:
            video = decode(latents)
        end = time.perf_counter()
        stats = {"denoise_s": decode_start - denoise_start, "decode_s": end - decode_start, "total_s": end - start,
                 "steps": steps, **self.transformer.cache_stats(), **self.run_stats}
        return VideoSysOutput(video=video, stats=stats, latents=latents.float().cpu())

    @staticmethod
    def to_frames(video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) in [-1, 1] -> (B, T, H, W, C) uint8."""
        video = (video.float() / 2 + 0.5).clamp(0, 1)
        return (video * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()

    # ---- weights ---------------------------------------------------------------------------
    def component(self, name: str):
        """The part saved as `name` (a family whose attributes differ from the folder layout overrides this)."""
        return getattr(self, name)

    def index_config(self) -> dict:
        """Pipeline-level entries of model_index.json (diffusers' register_to_config values), beside the parts."""
        return {}

    def save_pretrained(self, folder: str) -> None:
        """Write every component in the diffusers folder layout (loadable by this class and diffusers).

        Written into a sibling folder first, so a reader (eval_demo on a training snapshot, a crash)
        never sees half a checkpoint: a new folder appears whole; in an existing one each component
        and model_index.json replace their old copies whole, and other files there are kept.
        """
        folder = os.path.abspath(folder)
        staging = f"{folder}.saving-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.makedirs(staging)
        try:
            index = {"_class_name": self.pipeline_class_name, **self.index_config()}
            for name in self.components:
                part = self.component(name)
                part.save_pretrained(os.path.join(staging, name))
                from_transformers = name in ("text_encoder", "tokenizer") or type(part).__module__.startswith("transformers")
                library = "transformers" if from_transformers else "diffusers"
                index[name] = [library, getattr(part, "class_name", type(part).__name__)]
            with open(os.path.join(staging, "model_index.json"), "w") as f:
                json.dump(index, f, indent=2)
            if not os.path.exists(folder):
                os.rename(staging, folder)
                return
            for name in (*self.components, "model_index.json"):  # the index last: it names the parts
                target, old = os.path.join(folder, name), os.path.join(staging, name + ".old")
                if os.path.isdir(target):
                    os.rename(target, old)
                os.replace(os.path.join(staging, name), target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
