"""CascadeV's cache settings: method name -> cache key -> the fields of that method's config
(BaseConfig.cache_settings; the methods live in videosys/cache/, one file each). No cache paper covers
CascadeV: these are chosen here, not published. No TeaCache coefficients (fit them: videosys.cache.calibrate)."""

from videosys.cache.fastercache import DIFFUSERS

CACHE_SETTINGS = {
    # PAB: not published (the PAB paper has no CascadeV): Latte's window and ranges, its nearest relative (a 28-block
    # adaLN-single DiT on the same 1000-step DDPM schedule, its attention spatial / temporal; CascadeV's 3D
    # attention counts as spatial, as the paper does for full attention); no MLP broadcast (Latte's table
    # names Latte's blocks). Untuned: no trained CascadeV runs here
    "pab": {"cascadev": dict(spatial=((100, 800), 2), temporal=((100, 800), 3))},
    # FasterCache: CascadeV's sampler runs no CFG (one DiT call per step, on the condition-concatenated latents):
    # diffusers' attention reuse alone, the CFG-Cache part off (check_model refuses it on a model without CFG
    # branches)
    "fastercache": {"cascadev": dict(DIFFUSERS, uncond=None)},
}
