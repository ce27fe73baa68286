"""CogVideoX's published cache settings: method name -> cache key -> the fields of that method's config
(BaseConfig.cache_settings; the methods live in videosys/cache/, one file each). Keys: "cogvideox-2b",
"cogvideox-5b" (a checkpoint's own), "cogvideox" (both; CogVideoXConfig.cache_models)."""

from videosys.cache.fastercache import Calls

CACHE_SETTINGS = {
    # TeaCache: 4th-order polynomials, numpy.poly1d order (highest power first), fitted by the TeaCache authors' code
    # over every step of 70 T2V-CompBench prompts (TeaCache, arXiv 2411.19108; the authors' ali-vilab/TeaCache;
    # docs/caches/teacache.md)
    "teacache": {
        "cogvideox-2b": dict(coefficients=(-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00,
                                           -3.61568434e-03)),
        "cogvideox-5b": dict(coefficients=(-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00,
                                           -5.23162339e-02)),
        "cogvideox1.5-5b": dict(coefficients=(2.50210439e02, -1.65061612e02, 3.57804877e01, -7.81551492e-01,
                                              3.58559703e-02)),
    },
    # PAB (arXiv 2408.12588; the authors' NUS-HPC-AI-Lab/VideoSys; the table: docs/caches/pab.md):
    # published: joint attention only, MLPs left alone
    "pab": {"cogvideox": dict(spatial=((100, 850), 2), mlp_kinds=())},
    # FasterCache: the authors' settings, from Vchitect/FasterCache scripts/<model>/fastercache_sample_<model>.py
    # (their single-device script; counts are their 1-based `counter`, one [uncond; cond] call per step;
    # videosys/cache/fastercache.py explains compound=True and the scaling of calls):
    #   cogvideox (2b and 5b share the script; 50 steps): full attention on calls >= 18 not divisible by 3, weight 0.3;
    #   uncond skipped on calls >= 18 not divisible by 5; low x1.1 on calls <= 40, high x1.1 on calls >= 30.
    "fastercache": {"cogvideox": dict(spatial=Calls(18, every=3), temporal=None, weight=0.3, uncond=Calls(18, every=5),
                                      alpha_low=1.1, alpha_high=1.1, low_window=Calls(1, 40), high_window=Calls(30),
                                      compound=True, calls=50)},
}
