"""HunyuanVideo-1.5's published cache settings (BaseConfig.cache_settings): method name -> cache key -> the fields of
that method's config. Keys: "hunyuanvideo-1.5-<checkpoint>" (HunyuanVideo15Config.cache_models), "hunyuanvideo-1.5".

What is published for HunyuanVideo-1.5 (checked at Tencent-Hunyuan/HunyuanVideo-1.5 60783e7, Zehong-Ma/ComfyUI-MagCache
47bdd2a, ali-vilab/TeaCache):
- MagCache: the authors' ComfyUI node (nodes.py SUPPORTED_MODELS_MAG_RATIOS "hunyuan_video1.5" (20 steps) and
  "hunyuan_video1.5_40steps" (used for more than 20 steps); README table "HunyuanVideo1.5-T2V"), calibrated on the
  720p T2V model with CFG ("only support cfg>1"; examples/video_hunyuan_video_1.5_720p_t2v_magcache.json). Used here
  for the T2V checkpoints with CFG (480p and 720p); the I2V and CFG-distilled ones have none.
- TeaCache: the authors' TeaCache4HunyuanVideo is HunyuanVideo 1.0's (its polynomial is fitted on 1.0's
  modulated input): not used. No HunyuanVideo-1.5 polynomial is published, so "teacache" refuses and names the
  calibration command (scripts/calibrate_teacache.py --model hunyuanvideo-1.5).
- The release's own `--enable_cache --cache_type deepcache|teacache|taylorcache` (README "Usage"; generate.py
  defaults) are angelslim 0.2.1 helpers over a fixed step schedule: compute steps 0-10, every 4th of 11-44
  (`--cache_start_step 11 --cache_end_step 45 --cache_step_interval 4`) and 45-49 (deepcache also recomputes block
  53, `--no_cache_block_id 53`). What the helpers reuse lives in angelslim, not in the release, so no method here
  claims to be them; none is a default.
"""

# The authors' MagCache tables interleave the two CFG branches (ComfyUI runs them as separate calls: ratio
# index 2 * step + branch). Our block stack runs [uncond; cond] as one batch and MagCacheRecorder measures the
# mean over its tokens, so a step's ratio here is the mean of its two entries.
MAGCACHE_20_STEPS = (1.0, 1.0,
                     1.01172, 1.00293, 0.9873, 1.0127, 1.01465, 0.98926, 0.99805, 1.00098, 0.99512, 0.99365,
                     0.99512, 0.99561, 0.99316, 0.99365, 0.99365, 0.99365, 0.99316, 0.99316, 0.99268, 0.99268,
                     0.9917, 0.9917, 0.99023, 0.99023, 0.98828, 0.98877, 0.98633, 0.98633, 0.9834, 0.9834, 0.97949,
                     0.97998, 0.97363, 0.97363, 0.96436, 0.96436, 0.94824, 0.94873)
MAGCACHE_40_STEPS = (1.0, 1.0,
                     1.04199, 1.01953, 1.01172, 1.01855, 1.00293, 1.00586, 1.00098, 1.00195, 1.0, 1.00098, 0.99805,
                     0.99902, 0.99854, 0.99805, 0.99658, 0.99756, 0.99707, 0.99512, 0.99609, 0.99609, 0.99658,
                     0.99658, 0.99658, 0.99805, 0.99658, 0.99707, 0.99561, 0.99561, 0.99561, 0.99658, 0.99658,
                     0.99658, 0.99609, 0.99658, 0.99512, 0.99561, 0.99463, 0.99512, 0.99463, 0.99512, 0.99463,
                     0.99512, 0.99365, 0.99414, 0.99365, 0.99365, 0.99219, 0.99219, 0.99219, 0.99268, 0.99072,
                     0.99121, 0.99072, 0.99072, 0.98926, 0.98975, 0.9873, 0.98779, 0.98535, 0.98584, 0.9834,
                     0.9834, 0.97998, 0.97998, 0.97607, 0.97607, 0.96973, 0.96973, 0.96338, 0.96338, 0.9502,
                     0.9502, 0.93066, 0.93066, 0.896, 0.896, 0.81787, 0.81836)


def per_step(interleaved: tuple[float, ...]) -> tuple[float, ...]:
    return tuple((a + b) / 2 for a, b in zip(interleaved[::2], interleaved[1::2]))


# The authors' settings for 30-50 steps (the 720p T2V workflow's note: "With more inference steps (30-50), please
# increase the magcache_thresh to 0.06 and decrease the retension ratio to 0.2 ... magcache_K: 2 ... 1.7x speedup
# without degrading visual quality"), with the 40-step table (their node's choice above 20 steps; our MagCache
# resamples it to the run's steps by nearest index, as theirs does). At 20 steps they recommend
# {"method": "magcache", "threshold": 0.03, "max_skip_steps": 2, "retention_ratio": 0.25, "ratios": MAGCACHE_20}.
MAGCACHE_20 = per_step(MAGCACHE_20_STEPS)
MAGCACHE_T2V = dict(ratios=per_step(MAGCACHE_40_STEPS), threshold=0.06, max_skip_steps=2, retention_ratio=0.2)

CACHE_SETTINGS = {
    "magcache": {"hunyuanvideo-1.5-480p_t2v": MAGCACHE_T2V, "hunyuanvideo-1.5-720p_t2v": MAGCACHE_T2V},
}
