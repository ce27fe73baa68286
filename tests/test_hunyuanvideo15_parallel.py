"""HunyuanVideo-1.5 on the parallel engine (gloo, spawned CPU processes): sp=2 (Ulysses) and cfg=2 reproduce one
process, caches included (same latents within float tolerance, same frames, the very same cache decisions); I2V
under sp=2 too. The tiny model has nothing published, so the caches are given as specs."""

import pytest

from videosys import VideoSysEngine

from conftest import tiny_config, tiny_pipeline
from distributed import assert_same_as_single
from test_hunyuanvideo15 import image

MODEL = "hunyuanvideo-1.5"
PROMPT = 'a red sign that reads "OPEN"'
# 9 frames -> 3 latent frames of 3 x 5 (48 x 80 px): 45 video tokens, odd, so sp=2 pads the last shard
RUN = dict(seed=1, num_frames=9, height=48, width=80, num_inference_steps=8)
CACHES = ("none", {"method": "teacache", "coefficients": (1.0, 0.0), "threshold": 0.5},
          {"method": "pab", "spatial": ((100, 900), 2), "cross": None, "temporal": None}, "taylorseer")
REUSE = {1: ("teacache", "reused_steps"), 2: ("pab", "spatial_reused")}  # they do reuse here

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_per_rank")]
_single = {}


def single() -> list:
    if not _single:
        pipe = tiny_pipeline(MODEL)
        for i, cache in enumerate(CACHES):
            pipe.set_cache(cache)
            _single[i] = pipe.generate(PROMPT, **RUN)
    return _single


@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_gpus,cfg_parallel", [(2, False), (2, True)], ids=["sp2", "cfg2"])
def test_parallel_matches_single_process(num_gpus, cfg_parallel):
    ref = single()
    for i, (method, key) in REUSE.items():
        assert ref[i].stats[method][key] > 0, (method, key)
    with VideoSysEngine(tiny_config(MODEL, num_gpus=num_gpus, cfg_parallel=cfg_parallel)) as engine:
        assert engine.pipeline.transformer.parallel.sp_size == (1 if cfg_parallel else 2)
        for i, cache in enumerate(CACHES):
            engine.set_cache(cache)
            assert_same_as_single(engine.generate(PROMPT, **RUN), ref[i], str(cache))


@pytest.mark.timeout(300)
def test_i2v_sp2_matches_single_process():
    run = dict(seed=1, num_frames=9, num_inference_steps=4, image=image())
    ref = tiny_pipeline(MODEL, preset="tiny-i2v").generate(PROMPT, **run)
    with VideoSysEngine(tiny_config(MODEL, preset="tiny-i2v", num_gpus=2)) as engine:
        assert_same_as_single(engine.generate(PROMPT, **run), ref, "i2v")
