"""Open-Sora-Plan on the parallel engine (gloo, spawned CPU processes): Ulysses sp, cfg and cfg x sp
reproduce one process, caches included."""

import pytest

from videosys import OpenSoraPlanConfig, VideoSysEngine

PROMPT = "a red circle moving to the right"
# 9 frames at 48x80 px: 3 latent frames of 3x5 patches = 45 tokens, odd, so the sequence padding runs too
RUN = dict(seed=1, num_frames=9, height=48, width=80, num_inference_steps=10)
CACHES = ("none", "teacache-fast", "pab")


def tiny(**kw):
    return OpenSoraPlanConfig(preset="tiny", progress_bar=False, **kw)


@pytest.fixture(scope="module")
def single():
    engine = VideoSysEngine(tiny())
    out = {}
    for cache in CACHES:
        engine.set_cache(cache)
        out[cache] = engine.generate(PROMPT, **RUN)
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_gpus,cfg_parallel", [(2, False), (2, True), (4, True)])
def test_parallel_matches_single_process(single, num_gpus, cfg_parallel):
    with VideoSysEngine(tiny(num_gpus=num_gpus, cfg_parallel=cfg_parallel)) as engine:
        for cache in CACHES:
            engine.set_cache(cache)
            out = engine.generate(PROMPT, **RUN)
            ref = single[cache]
            scale = max(1.0, float(ref.latents.abs().max()))
            assert (out.latents - ref.latents).abs().max() <= 1e-4 * scale, cache
            assert (out.video.float() - ref.video.float()).abs().max() <= 1.0
            if cache != "none":  # the same decisions on every rank as in one process
                key = cache.split("-")[0]
                assert out.stats[key] == ref.stats[key]
    assert single["pab"].stats["pab"]["spatial_reused"] > 0
