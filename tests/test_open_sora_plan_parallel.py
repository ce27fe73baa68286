"""Open-Sora-Plan on the parallel engine (gloo, spawned CPU processes): v1.2 (Ulysses sp) and v1.1 (Latte's DSP),
sp, cfg and cfg x sp reproduce one process, caches included."""

import pytest

from videosys import OpenSoraPlanConfig, VideoSysEngine

from distributed import assert_same_as_single, generate_per_cache

PROMPT = "a red circle moving to the right"
# 9 frames at 48x80 px: 3 latent frames of 3x5 patches = 45 tokens, odd, so the sequence padding runs too
RUN = dict(seed=1, num_frames=9, height=48, width=80, num_inference_steps=10)
CACHES = ("none", "teacache-fast", "pab")


def tiny(**kw):
    return OpenSoraPlanConfig(preset="tiny", progress_bar=False, **kw)


@pytest.fixture(scope="module")
def single():
    return generate_per_cache(VideoSysEngine(tiny()), CACHES, PROMPT, **RUN)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_gpus,cfg_parallel", [(2, False), (2, True), (4, True)])
def test_parallel_matches_single_process(single, num_gpus, cfg_parallel):
    with VideoSysEngine(tiny(num_gpus=num_gpus, cfg_parallel=cfg_parallel)) as engine:
        for cache, out in generate_per_cache(engine, CACHES, PROMPT, **RUN).items():
            assert_same_as_single(out, single[cache], cache)
    assert single["pab"].stats["pab"]["spatial_reused"] > 0


# v1.1: 9 frames -> 3 latent frames, odd, so DSP's frame padding runs too; 4 PNDM steps = 13 model calls
RUN_V110 = dict(seed=1, num_frames=9, height=48, width=80, num_inference_steps=4)


@pytest.fixture(scope="module")
def single_v110():
    return generate_per_cache(VideoSysEngine(tiny(version="v110")), CACHES, PROMPT, **RUN_V110)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_gpus,cfg_parallel", [(2, False), (2, True)])
def test_v110_parallel_matches_single_process(single_v110, num_gpus, cfg_parallel):
    with VideoSysEngine(tiny(version="v110", num_gpus=num_gpus, cfg_parallel=cfg_parallel)) as engine:
        for cache, out in generate_per_cache(engine, CACHES, PROMPT, **RUN_V110).items():
            assert_same_as_single(out, single_v110[cache], cache)
    assert single_v110["pab"].stats["pab"]["temporal_reused"] > 0
    assert single_v110["teacache-fast"].stats["teacache"]["reused_steps"] > 0
