"""Latte's published cache settings: method name -> cache key -> the fields of that method's config
(BaseConfig.cache_settings; the methods live in videosys/cache/, one file each)."""

from videosys.cache.fastercache import Calls

CACHE_SETTINGS = {
    # TeaCache: a 4th-order polynomial, numpy.poly1d order (highest power first), fitted by the reference code
    # over every step of 70 T2V-CompBench prompts (reference/acceleration.md)
    "teacache": {"latte": dict(coefficients=(-2.46434137e03, 3.08044764e02, 8.07447667e01, -4.11385132e00,
                                             1.11001402e-01))},
    # PAB (reference/acceleration.md): window (lo, hi) and range per attention kind; MLP: {timestep: (blocks,
    # skip)} for spatial and temporal blocks
    "pab": {"latte": dict(spatial=((100, 800), 2), temporal=((100, 800), 3), cross=((100, 800), 6),
                          mlp={t: (tuple(range(5)), 2) for t in (720, 640, 560, 480, 400)})},
    # FasterCache: the authors' settings, from Vchitect/FasterCache scripts/<model>/fastercache_sample_<model>.py
    # (their single-device script; counts are their 1-based `counter`, one [uncond; cond] call per step;
    # videosys/cache/fastercache.py explains compound=True and the scaling of calls):
    #   latte (50 DDIM, configs/latte/fastercache_sample.yaml): spatial + temporal attention reused on even calls >= 16
    #   (`counter>=16 and counter%2==0`), weight 0.5; uncond skipped on calls >= 18 not divisible by 5; delta_lf x1.1
    #   on calls < 45, `elif counter>35` delta_hf x1.1: so high on calls >= 45 only.
    # (phase 1 of every 2: acts on even calls, computes on odd ones)
    "fastercache": {"latte": dict(spatial=Calls(16, every=2, phase=1), temporal=Calls(16, every=2, phase=1),
                                  weight=0.5, uncond=Calls(18, every=5), alpha_low=1.1, alpha_high=1.1,
                                  low_window=Calls(1, 44), high_window=Calls(45), compound=True, calls=50)},
}
