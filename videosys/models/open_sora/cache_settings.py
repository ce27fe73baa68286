"""Open-Sora 1.2's published cache settings: method name -> cache key -> the fields of that method's config
(BaseConfig.cache_settings; the methods live in videosys/cache/, one file each)."""

from videosys.cache.fastercache import Calls, Ramp

CACHE_SETTINGS = {
    # TeaCache: a 4th-order polynomial, numpy.poly1d order (highest power first), fitted by the TeaCache authors' code
    # over every step of 70 T2V-CompBench prompts (TeaCache, arXiv 2411.19108; the authors' ali-vilab/TeaCache;
    # docs/caches/teacache.md)
    "teacache": {"open-sora": dict(coefficients=(2.17546007e02, -1.18329252e02, 2.68662585e01, -4.59364272e-02,
                                                 4.84426240e-02))},
    # PAB (arXiv 2408.12588; the authors' NUS-HPC-AI-Lab/VideoSys; the table: docs/caches/pab.md):
    # window (lo, hi) and range per attention kind; MLP: {timestep: (blocks,
    # skip)} for spatial and temporal blocks
    "pab": {"open-sora": dict(spatial=((450, 930), 2), temporal=((450, 930), 4), cross=((450, 930), 6),
                              mlp={t: (tuple(range(5)), 2) for t in (676, 788, 864)})},
    # FasterCache: the authors' settings, from Vchitect/FasterCache scripts/<model>/fastercache_sample_<model>.py
    # (their single-device script; counts are their 1-based `counter`, one [uncond; cond] call per step;
    # videosys/cache/fastercache.py explains compound=True and the scaling of calls):
    #   open-sora (1.2, 30 rflow steps): spatial + temporal (STDiT3 blocks) on even calls > 7, weight
    #   0.9 (call - 7) / 20; uncond skipped on calls > 11 not divisible by 5; high x1.15 on calls >= 20, low x1.15
    #   on calls <= 25 (both ifs).
    # Their script has no shape check and broadcasts the cond rows to both branches where the newest computed
    # output lacks the rows a call needs (calls 20 and 30); ours computes there, as their other scripts do. Their
    # multi-device script differs (MLP reuse in blocks 14-42); the single-device one is the reference.
    # (phase 1 of every 2: acts on even calls, computes on odd ones)
    "fastercache": {"open-sora": dict(spatial=Calls(8, every=2, phase=1), temporal=Calls(8, every=2, phase=1),
                                      weight=Ramp(7, 20, 0.9), uncond=Calls(12, every=5), alpha_low=1.15,
                                      alpha_high=1.15, low_window=Calls(1, 25), high_window=Calls(20),
                                      compound=True, calls=30)},
}
