"""LaVie's cache settings (BaseConfig.cache_settings): method name -> cache key -> the fields of that method's config.
Keys: "lavie-tiny" (the random tiny preset), "lavie" (the release; LaVieConfig.cache_models).

Nothing is published for LaVie by any cache method's authors (TeaCache, MagCache, PAB, FasterCache: none lists it).
DeepCache is for UNets: LaVie's UNet takes the authors' defaults (videosys/cache/deepcache.py).
"""

CACHE_SETTINGS: dict = {
    # TeaCache's polynomial (numpy.poly1d order) for the indicator LaVie's UNet gives (its first ResNet's
    # timestep-modulated input, unet.py), fitted by our calibration on the *tiny random* preset only:
    # `python scripts/calibrate_teacache.py --model lavie --preset tiny --threads 1` (the 24 demo prompts, seed 0,
    # 50 DDPM steps, cfg 7.5: 1176 points, R^2 0.957). It says nothing about the released UNet, which has none until
    # calibrated (`--model lavie --model-path <pretrained_models>`); TeaCache refuses it and names that command.
    "teacache": {"lavie-tiny": dict(coefficients=(3.29743594e01, -3.53364551e01, 1.08841475e01, 5.10771629e-01,
                                                  -1.29725435e-01))},
    "deepcache": {"lavie": {}},  # a UNet: DeepCache's own defaults (interval 3, branch 0)
}
