"""Open-Sora-Plan's published cache settings: method name -> cache key -> the fields of that method's config
(BaseConfig.cache_settings; the methods live in videosys/cache/, one file each). Keys: "open-sora-plan-v110",
"open-sora-plan-v120" (a version's own), "open-sora-plan" (both versions; OpenSoraPlanConfig.cache_models)."""

from videosys.cache.fastercache import DIFFUSERS, Calls

CACHE_SETTINGS = {
    # TeaCache: a 4th-order polynomial, numpy.poly1d order (highest power first), fitted by the TeaCache authors' code
    # over every step of 70 T2V-CompBench prompts (TeaCache, arXiv 2411.19108; the authors' ali-vilab/TeaCache;
    # docs/caches/teacache.md); fitted on v1.1 65x512x512, the
    # family's for both versions
    "teacache": {"open-sora-plan": dict(coefficients=(2.05943668e05, -1.48759286e04, 3.06085986e02, 1.31418080e00,
                                                      2.39658469e-03))},
    # PAB (arXiv 2408.12588; the authors' NUS-HPC-AI-Lab/VideoSys; the table: docs/caches/pab.md):
    # window (lo, hi) and range per attention kind; MLP: {timestep: (blocks,
    # skip)} for spatial and temporal blocks
    "pab": {"open-sora-plan-v110": dict(spatial=((100, 850), 2), temporal=((100, 850), 4), cross=((100, 850), 6),
                                        # 14 timesteps 738 .. 426
                                        mlp={t: (tuple(range(7)), 2) for t in range(738, 425, -24)}),
            "open-sora-plan-v120": dict(spatial=((100, 850), 2), cross=((100, 850), 6))},
    # FasterCache: the authors' settings, from Vchitect/FasterCache scripts/<model>/fastercache_sample_<model>.py
    # (their single-device script; counts are their 1-based `counter`, one [uncond; cond] call per step;
    # videosys/cache/fastercache.py explains compound=True and the scaling of calls):
    #   open-sora-plan-v110 (configs/opensora_plan/fastercache_sample.yaml: v1.1.0 65x512x512, 150 PNDM steps = 159
    #   calls): spatial + temporal on calls >= 45 not divisible by 3, weight 0.3; uncond skipped on calls >= 40 not
    #   divisible by 6; low x1.1 on calls <= 130, `elif counter>=100` high x1.2: so on calls > 130 only.
    # Their multi-device script differs (temporal weight 0.5, spatial (call - 45) / 300); the single-device one is
    # the reference. Open-Sora-Plan v1.2 (no authors' settings) gets diffusers'.
    "fastercache": {"open-sora-plan-v110": dict(spatial=Calls(45, every=3), temporal=Calls(45, every=3), weight=0.3,
                                                uncond=Calls(40, every=6), alpha_low=1.1, alpha_high=1.2,
                                                low_window=Calls(1, 130), high_window=Calls(131), compound=True,
                                                calls=159),
                    "open-sora-plan": DIFFUSERS},
}
