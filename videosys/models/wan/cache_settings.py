"""Wan's published cache settings: method name -> cache key -> that method's config fields
(BaseConfig.cache_settings). Keys: "wan-<kind>" (a release's own, checkpoints.py), "wan-<kind>-e" (TeaCache's
use_ret_steps=False mode), "wan" (every release).

How the authors' per-call settings map here. Their Wan scripts call the model twice per step (cond, then uncond)
and count calls (`cnt`, 2 per step), each branch with its own accumulator and residual. Ours runs cond and uncond
in one batched call ("batch" state), as diffusers' batching-free WanPipeline does not. Why the published
numbers still apply as fitted: TeaCache's indicator (e0 or e) depends on the timestep alone, identical for cond and
uncond, so their two accumulators take the same decisions and ours takes them once; the batch's residual is the
pair of theirs. MagCache decides from the step's ratio alone; its two published lists (cond, uncond) differ by
< 0.01 per step: we publish the cond list (mag_ratios[0::2]), so a step where the two lists would decide
differently (rare) follows the cond one for both. EasyCache: the authors decide on the cond call and apply it to
the pair; ours measures the same quantities over the whole batch (cond and uncond halves summed), a close but
not identical rate.
"""

# TeaCache4Wan2.1 (ali-vilab/TeaCache, TeaCache4Wan2.1/teacache_generate.py, `coefficients` per ckpt_dir):
#   use_ret_steps=True (their recommended mode; indicator e0, the time projection): ret_steps = 5*2 calls -> the
#   first 5 steps compute; cutoff_steps = sample_steps*2 -> nothing forced at the end (final_steps=0).
#   use_ret_steps=False (indicator e, the time embedding): ret_steps = 1*2, cutoff_steps = sample_steps*2 - 2 ->
#   the first and the last step compute.
_RET = dict(warmup_steps=5, final_steps=0)
_NO_RET = dict(warmup_steps=1, final_steps=1)
TEACACHE = {
    "wan-t2v-1.3B": dict(coefficients=(-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01,
                                       -4.99875664e-02), **_RET),
    "wan-t2v-14B": dict(coefficients=(-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01,
                                      -3.15583525e-01), **_RET),
    "wan-i2v-14B-480P": dict(coefficients=(2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01,
                                           1.32517977e-01), **_RET),
    "wan-i2v-14B-720P": dict(coefficients=(8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01,
                                           -4.17769401e-02), **_RET),
    "wan-t2v-1.3B-e": dict(coefficients=(2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00,
                                         1.37887774e-01), **_NO_RET),
    "wan-t2v-14B-e": dict(coefficients=(-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429,
                                        -13.02252404), **_NO_RET),
    "wan-i2v-14B-480P-e": dict(coefficients=(-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00,
                                             -2.01973289e-01), **_NO_RET),
    "wan-i2v-14B-720P-e": dict(coefficients=(-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
                               **_NO_RET),
    # the shipped demo's (videosys/assets/demo-wan), ours: `python scripts/calibrate_teacache.py --model wan --preset
    # demo --threads 1`, the 24 demo prompts x seed 0, 50 steps, cfg 2.0; R^2 0.13: the indicator
    # predicts this model's output change poorly (docs/benchmarks.md)
    "wan-demo": dict(coefficients=(1.02157236e+05, -1.44925162e+04, 6.93742663e+02, -1.24529427e+01, 9.76280162e-02), **_RET),
}

# MagCache4Wan2.1 (Zehong-Ma/MagCache, MagCache4Wan2.1/magcache_generate.py, `mag_ratios` per ckpt_dir: the
# [1.0]*2 padding then cond / uncond interleaved; here [1.0] + the cond values, one per step: 50 for T2V, 40 for
# I2V). Operating points from MagCache4Wan2.1/README.md: 1.3B: --magcache_thresh 0.12 --magcache_K 4; 14B (T2V
# and I2V): 0.24, K 6; --retention_ratio 0.2 throughout.
MAGCACHE = {
    "wan-t2v-1.3B": dict(threshold=0.12, max_skip_steps=4, retention_ratio=0.2, ratios=(
        1.0, 1.0124, 1.00166, 0.99791, 0.99682, 0.99634, 0.99567, 0.99416, 0.99578, 0.9957, 0.99511, 0.99535,
        0.99552, 0.99541, 0.9954, 0.99489, 0.99518, 0.99484, 0.99481, 0.99415, 0.99419, 0.99396, 0.99388, 0.99349,
        0.99309, 0.9927, 0.99228, 0.99171, 0.99137, 0.99068, 0.99005, 0.98944, 0.98849, 0.98758, 0.98644, 0.98504,
        0.9836, 0.98202, 0.97977, 0.97717, 0.9741, 0.97003, 0.96538, 0.9593, 0.95086, 0.94013, 0.92402, 0.90241,
        0.86821, 0.81838)),
    "wan-t2v-14B": dict(threshold=0.24, max_skip_steps=6, retention_ratio=0.2, ratios=(
        1.0, 1.02504, 1.00025, 0.9985, 0.99779, 0.9966, 0.99482, 0.99467, 0.99664, 0.99434, 0.99533, 0.99468,
        0.99438, 0.99516, 0.99384, 0.99404, 0.99517, 0.99409, 0.99428, 0.99347, 0.99418, 0.99271, 0.99313, 0.99215,
        0.99218, 0.99216, 0.99163, 0.99138, 0.98982, 0.98996, 0.9887, 0.98772, 0.98767, 0.98573, 0.98501, 0.9838,
        0.98177, 0.98037, 0.97678, 0.97546, 0.97184, 0.96711, 0.96349, 0.95629, 0.94926, 0.93964, 0.92511, 0.90693,
        0.8796, 0.86111)),
    "wan-i2v-14B-480P": dict(threshold=0.24, max_skip_steps=6, retention_ratio=0.2, ratios=(
        1.0, 0.98783, 0.97559, 0.98311, 0.98202, 0.9888, 0.98762, 0.98957, 0.99052, 0.99383, 0.98857, 0.99065,
        0.98845, 0.99057, 0.98957, 0.98601, 0.98823, 0.98756, 0.98808, 0.98721, 0.98571, 0.98543, 0.98157, 0.98411,
        0.97952, 0.98149, 0.9774, 0.97825, 0.97355, 0.97085, 0.97056, 0.96588, 0.96113, 0.9567, 0.94961, 0.93973,
        0.93217, 0.91878, 0.90955, 0.92617)),
    "wan-i2v-14B-720P": dict(threshold=0.24, max_skip_steps=6, retention_ratio=0.2, ratios=(
        1.0, 0.99428, 0.98588, 0.98273, 0.99018, 0.98911, 0.98646, 0.99454, 0.9891, 0.99124, 0.99102, 0.99215,
        0.99515, 0.99576, 0.99068, 0.99097, 0.99166, 0.99041, 0.99201, 0.99101, 0.98599, 0.98845, 0.98848, 0.98862,
        0.98718, 0.98497, 0.98264, 0.98389, 0.97938, 0.97535, 0.97498, 0.973, 0.96827, 0.96261, 0.95335, 0.94649,
        0.93397, 0.91636, 0.89088, 0.8679)),
    # MagCache4Wan2.2 (MagCache4Wan2.2/magcache_generate.py, the ti2v task's two `mag_ratios` lists: text-to-video and
    # image-to-video; README: --magcache_thresh 0.06 --magcache_K 2, retention_ratio 0.2 (the argparse default)).
    # The image-to-video list applies where the config names an image (WanConfig.image): a request's own image
    # does not switch tables.
    "wan-ti2v-5B": dict(threshold=0.06, max_skip_steps=2, retention_ratio=0.2, ratios=(
        1.0, 0.99505, 0.99441, 0.99558, 0.99499, 0.99534, 0.99468, 0.99463, 0.9946, 0.99408, 0.9945, 0.99409,
        0.99403, 0.99382, 0.99349, 0.99377, 0.9933, 0.99303, 0.99217, 0.992, 0.99201, 0.99133, 0.99112, 0.99155,
        0.98958, 0.98959, 0.98838, 0.98826, 0.9883, 0.98711, 0.98562, 0.98511, 0.98414, 0.98284, 0.98104, 0.97981,
        0.97849, 0.97557, 0.97398, 0.97171, 0.96917, 0.96511, 0.96263, 0.95839, 0.95483, 0.94942, 0.9468, 0.94583,
        0.94843, 0.96949)),
    "wan-ti2v-5B-i2v": dict(threshold=0.06, max_skip_steps=2, retention_ratio=0.2, ratios=(
        1.0, 0.99512, 0.99559, 0.99595, 0.99512, 0.99546, 0.99543, 0.99496, 0.99504, 0.99444, 0.99481, 0.99435,
        0.9943, 0.99411, 0.99373, 0.99413, 0.99363, 0.99335, 0.99244, 0.99229, 0.99239, 0.99163, 0.99149, 0.99191,
        0.9898, 0.9899, 0.98849, 0.98846, 0.98861, 0.9874, 0.98588, 0.98539, 0.98444, 0.9831, 0.98119, 0.98001,
        0.97862, 0.97555, 0.97392, 0.97152, 0.96871, 0.96435, 0.96129, 0.95639, 0.95176, 0.94446, 0.93972, 0.93575,
        0.93537, 0.96655)),
    # the shipped demo's, ours: `python scripts/calibrate_teacache.py --model wan --preset demo --method magcache
    # --threads 1` (24 demo prompts x seed 0, 50 steps, cfg 2.0); the 1.3B's operating point
    "wan-demo": dict(threshold=0.12, max_skip_steps=4, retention_ratio=0.2, ratios=(
        1.00000, 1.01007, 0.99845, 0.99432, 0.99711, 1.00303, 0.98210, 0.99138, 0.99870, 0.98621, 0.98433,
        0.98187, 1.00198, 0.98444, 0.98314, 0.99310, 0.98946, 0.98791, 0.98663, 0.98851, 0.97544, 0.97977,
        0.98930, 0.99315, 0.98828, 0.97169, 0.99354, 0.97994, 0.97308, 1.00175, 0.97307, 0.98378, 1.00021,
        0.97881, 1.00648, 0.96286, 0.99880, 0.98547, 0.97530, 0.97386, 0.99826, 0.98714, 0.98768, 0.99297,
        1.00996, 1.00357, 1.00921, 1.00806, 1.04507, 1.06655)),
}

# EasyCache4Wan2.1 (H-EmbodVis/EasyCache, EasyCache4Wan2.1/easycache_generate.py): --thresh default 0.05,
# ret_steps = 10 * 2 calls (the first 10 steps compute), cutoff_steps = sample_steps * 2 - 2 (the last computes,
# as ours always does); T2V and I2V alike.
EASYCACHE = {"wan": dict(threshold=0.05, warmup=10)}

# The output forecast's calibrated schedules for the shipped demo (forecast-s<K>: the K of 50 steps that compute),
# ours: `python scripts/calibrate_teacache.py --model wan --preset demo --method forecast --computes 13 19 --prompts 8
# --rounds 2 --threads 1`: 8 demo prompts spread over the set, seed 0, cfg 2.0; the comment is that run's mean PSNR
FORECAST = {"wan-demo": dict(schedules={
    13: (50, (0, 2, 4, 6, 8, 12, 15, 20, 26, 31, 38, 44, 48)),  # 50.43 dB
    19: (50, (0, 2, 3, 5, 6, 8, 10, 12, 14, 18, 20, 24, 28, 32, 38, 42, 45, 48, 49)),  # 54.87 dB
    # --computes 27 (same settings, a later run)
    27: (50, (0, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13, 16, 18, 20, 22, 26, 29, 32, 36, 38, 40, 42, 44, 45, 46, 48, 49)),  # 58.28 dB
})}

CACHE_SETTINGS = {"teacache": TEACACHE, "magcache": MAGCACHE, "easycache": EASYCACHE, "forecast": FORECAST}


def cache_models(kind: str, teacache_e0: bool = True, image: bool = False) -> tuple[str, ...]:
    """A release's cache keys, most specific first; teacache_e0=False puts TeaCache's use_ret_steps=False
    table first (the other methods have no "-e" key and fall through to the release's own); image=True (TI2V-5B
    with the config's image) puts its image-to-video tables first."""
    own = (f"wan-{kind}",) if teacache_e0 else (f"wan-{kind}-e", f"wan-{kind}")
    return (*((f"wan-{kind}-i2v",) if image else ()), *own, "wan")
