import os

import pytest
import torch

# Tests never touch the network; a hub lookup fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the parallel tests run 4 CPU processes on machines with fewer cores (correctness, not speed)
os.environ.setdefault("VIDEOSYS_ALLOW_OVERSUBSCRIBE", "1")
# VIDEOSYS_TEST_THREADS=1 when another job shares the cores (two busy threads on one core run ~30x slower)
torch.set_num_threads(int(os.environ.get("VIDEOSYS_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


PROMPT = "a red circle moving to the right"  # the prompt the tests generate (a demo caption)


def tiny_config(model: str, **fields):
    """A family's config (videosys.models name), the `tiny` preset unless `preset` is given, no progress bar."""
    from videosys.models import config_class

    return config_class(model)(**{"preset": "tiny", "progress_bar": False, **fields})


def tiny_pipeline(model: str, **fields):
    config = tiny_config(model, **fields)
    return config.pipeline_cls.from_config(config)


@pytest.fixture(scope="session")
def tiny_latte():
    return tiny_pipeline("latte")


@pytest.fixture(scope="module")
def one_thread_per_rank():
    """One intra-op thread per process (spawned ranks read the variable): with several ranks, or other jobs,
    on a few cores, spinning thread pools make a step ~10x slower. Modules with spawned ranks use it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_engine_left_running():
    """A test that fails while holding a multi-process engine outside a `with` block leaves its process group up,
    and every later multi-process test would then be refused ("already running in this process"): after each
    test, such an engine is shut down, so one failure stays one failure."""
    yield
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    import gc

    from videosys.core.engine import VideoSysEngine

    for engine in [obj for obj in gc.get_objects() if isinstance(obj, VideoSysEngine)]:
        engine.shutdown(timeout=1.0)
    if dist.is_initialized():
        dist.destroy_process_group()


def published(*keys: str) -> dict:
    """The published cache settings (method name -> fields) of the checkpoint with these cache keys (most specific
    first, e.g. "cogvideox-5b", "cogvideox"), from the family that publishes under them: what that checkpoint's
    BaseConfig.published_cache_settings() gives."""
    from videosys.cache.registry import settings_for
    from videosys.models import FAMILIES, config_class

    for family in FAMILIES:
        found = settings_for(config_class(family).cache_settings, keys)
        if found:
            return found
    return {}


def applicable_methods(pipe) -> dict:
    """Every registered videosys cache method (calibration recorders and test-registered methods aside) enabled by
    name on `pipe`: method name -> its config, or None where it refuses this model before any compute."""
    from videosys.cache import METHODS

    out = {}
    for name, method in METHODS.items():
        if name.endswith("-recorder") or not method.config_cls.__module__.startswith("videosys."):
            continue
        try:
            pipe.set_cache(name)
            out[name] = pipe.transformer.active_cache(name).config
        except ValueError:
            out[name] = None
    pipe.set_cache(None)
    return out


@pytest.fixture
def skip_steps():
    """A registered stub cache ("test-skip-steps") that skips the model on given steps, supplying its last prediction:
    a forced whole-step schedule. Yields its config class: SkipStepsConfig(steps=(...))."""
    from dataclasses import dataclass

    from videosys.cache.hooks import Cache
    from videosys.cache.registry import register, unregister

    @dataclass
    class SkipStepsConfig:
        steps: tuple = ()

    class SkipSteps(Cache):
        def __init__(self, config):
            self.config, self.step, self.last = config, 0, None

        def begin(self, timesteps, refresh_steps=()):
            self.last = None

        def set_step(self, index, timestep):
            self.step = index

        def step_output(self, compute, group=None):
            if self.step in self.config.steps and self.last is not None:
                return self.last
            self.last = compute()
            return self.last

    register("test-skip-steps", SkipStepsConfig, SkipSteps, for_model=lambda setting=None: SkipStepsConfig())
    yield SkipStepsConfig
    unregister("test-skip-steps")
