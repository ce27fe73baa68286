"""Latte's published cache settings: method name -> cache key -> the fields of that method's config
(BaseConfig.cache_settings; the methods live in videosys/cache/, one file each)."""

from videosys.cache.fastercache import Calls

CACHE_SETTINGS = {
    # TeaCache: a 4th-order polynomial, numpy.poly1d order (highest power first), fitted by the TeaCache authors' code
    # over every step of 70 T2V-CompBench prompts (TeaCache, arXiv 2411.19108; the authors' ali-vilab/TeaCache;
    # docs/caches/teacache.md)
    "teacache": {"latte": dict(coefficients=(-2.46434137e03, 3.08044764e02, 8.07447667e01, -4.11385132e00,
                                             1.11001402e-01))},
    # PAB (arXiv 2408.12588; the authors' NUS-HPC-AI-Lab/VideoSys; the table: docs/caches/pab.md):
    # window (lo, hi) and range per attention kind; MLP: {timestep: (blocks,
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
    # The output forecast's calibrated schedules (forecast-s<K>: the K of 50 DDIM steps that compute), ours:
    # `python scripts/calibrate_teacache.py --method forecast --computes 19 13 --prompts 8 --threads 1` (and
    # --computes 10 16 25): 8 demo prompts spread over the set (every colour and direction), seed 0; the comment is
    # that run's mean PSNR
    "forecast": {
        "latte-demo": dict(schedules={
            10: (50, (0, 5, 11, 16, 21, 27, 33, 38, 44, 48)),  # 28.98 dB
            13: (50, (0, 6, 8, 11, 14, 17, 21, 25, 29, 33, 38, 43, 47)),  # 38.61 dB
            16: (50, (0, 5, 7, 10, 13, 17, 20, 23, 26, 30, 33, 35, 40, 43, 47, 48)),  # 40.53 dB
            19: (50, (0, 2, 6, 7, 10, 12, 15, 17, 20, 22, 24, 27, 30, 33, 37, 40, 43, 46, 48)),  # 45.92 dB
            25: (50, (0, 1, 4, 6, 8, 10, 12, 14, 16, 18, 20, 21, 24, 27, 29, 31, 33, 35, 37, 39, 42, 43, 46, 47,
                      48)),  # 48.10 dB
        }),
    },
    # MagCache: magnitude ratios per step (first 1.0) of the shipped demo models, ours: nobody publishes Latte's.
    # `python scripts/calibrate_teacache.py --model latte --preset demo --method magcache --threads 1` (and
    # --preset demo-skip): the 24 demo prompts, seed 0, 50 DDIM steps, cfg 7.5 (rounded to 5 decimals)
    "magcache": {
        "latte-demo": dict(ratios=(
            1.00000, 0.95376, 1.01456, 0.96594, 1.07820, 0.91426, 0.95726, 0.98905, 0.98943, 0.98846, 0.97831, 0.98569,
            0.98959, 0.95556, 0.99230, 0.99539, 0.97921, 0.93916, 0.95596, 0.97243, 1.01272, 0.96687, 0.95159, 0.99305,
            0.96417, 0.98495, 0.96073, 0.96044, 0.99206, 0.95596, 0.98530, 0.98917, 0.98038, 0.98268, 0.98585, 0.98904,
            0.99177, 0.98550, 0.97948, 0.99574, 0.99376, 0.99307, 1.00551, 0.98777, 0.99145, 0.99204, 1.00496, 1.00814,
            0.94532, 0.90263)),
        "latte-demo-skip": dict(ratios=(
            1.00000, 0.96092, 0.93665, 1.01512, 1.00353, 0.95280, 0.99489, 0.96166, 0.95195, 0.99516, 0.95064, 0.94652,
            0.97791, 0.97868, 0.93500, 0.97093, 0.99762, 0.98097, 0.94465, 0.94122, 0.97815, 0.99414, 0.96641, 0.96270,
            0.97461, 0.97648, 0.98076, 0.96844, 0.98494, 0.98159, 0.98336, 0.97986, 0.99083, 0.99107, 0.99206, 0.99188,
            0.99579, 0.99987, 0.99409, 1.00092, 1.00022, 0.99920, 1.00329, 1.00277, 0.99693, 0.99727, 1.00760, 1.00227,
            1.00798, 0.92667)),
    },
}
