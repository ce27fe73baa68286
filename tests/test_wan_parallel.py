"""Wan on the parallel engine (gloo, spawned CPU processes): sp=2 and cfg=2 (PARAMS) reproduce one process, caches included
(latents within float tolerance, frames within one uint8 level, the same cache decisions), for T2V, Wan2.1 I2V
(CLIP tokens, the image conditioning), the A14B experts (each expert's own cache state) and TI2V-5B (per-token
timesteps, sharded with the tokens)."""

import numpy as np
import pytest

from videosys import VideoSysEngine

from conftest import PROMPT, tiny_config, tiny_pipeline
from distributed import assert_same_as_single

IMAGE = np.random.RandomState(0).randint(0, 256, (40, 60, 3)).astype(np.uint8)
# 9 frames -> 3 latent frames of 3x5 patches (48x80 px): 45 tokens, so sp=2 pads the last shard
RUN = dict(seed=1, num_frames=9, height=48, width=80, num_inference_steps=10)
# the tiny random model's indicator changes far more per step than a trained one: threshold 1.0 reuses here
TEA = {"method": "teacache", "threshold": 1.0, "coefficients": [1.0, 0.0]}
CASES = {  # name -> preset, run, caches (name -> spec), (cache, method) that must reuse in one process
    "t2v": ("tiny", RUN, {"none": "none", "teacache": "teacache-1.0", "magcache": "magcache-0.5"},
            (("teacache", "teacache"), ("magcache", "magcache"))),
    "i2v": ("tiny-i2v", {**RUN, "image": IMAGE}, {"none": "none", "teacache": "teacache-1.0"},
            (("teacache", "teacache"),)),
    "a14b": ("tiny-a14b", RUN, {"none": "none", "teacache": TEA}, (("teacache", "teacache"),)),
    # 64x96 px: a 2x3 patch grid of 3 latent frames, 18 tokens; the image's frame keeps timestep 0
    "ti2v": ("tiny-ti2v", {**RUN, "height": 64, "width": 96, "image": IMAGE}, {"none": "none", "teacache": TEA},
             (("teacache", "teacache"),)),
}
# sp=2 for every variant (each shards its own conditioning); cfg=2 where the branches differ in more than the text
# (the A14B experts' states) and once for T2V; cfg2 x sp2 on the A14B
PARAMS = ([(name, 2, False) for name in CASES] + [("t2v", 2, True), ("a14b", 2, True)] + [("a14b", 4, True)])
_single = {}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_per_rank")]


def single(name: str) -> dict:
    if name not in _single:
        preset, run, caches, _ = CASES[name]
        pipe = tiny_pipeline("wan", preset=preset)
        _single[name] = {}
        for key, spec in caches.items():
            pipe.set_cache(spec)
            _single[name][key] = pipe.generate(PROMPT, **run)
    return _single[name]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name,num_gpus,cfg_parallel", PARAMS, ids=[f"{n}-{g}gpus-cfg{int(c)}" for n, g, c in PARAMS])
def test_parallel_matches_single_process(name, num_gpus, cfg_parallel):
    preset, run, caches, reuse = CASES[name]
    ref = single(name)
    for key, method in reuse:
        assert ref[key].stats[method]["reused_steps"] > 0, key
    with VideoSysEngine(tiny_config("wan", preset=preset, num_gpus=num_gpus, cfg_parallel=cfg_parallel)) as engine:
        for key, spec in caches.items():
            engine.set_cache(spec)
            out = engine.generate(PROMPT, **run)
            assert_same_as_single(out, ref[key], key)
            for method in ("magcache", "easycache"):
                assert out.stats.get(method) == ref[key].stats.get(method), key
