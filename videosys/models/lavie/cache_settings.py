"""LaVie's cache settings (BaseConfig.cache_settings): method name -> cache key -> the fields of that method's config.
Keys: "lavie-tiny" (the random tiny preset), "lavie" (the release; LaVieConfig.cache_models).

Nothing is published for LaVie by any cache method's authors (TeaCache, MagCache, PAB, FasterCache: none lists it).
"""

CACHE_SETTINGS: dict = {}
