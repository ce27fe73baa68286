"""HunyuanVideo-1.5's published cache settings (BaseConfig.cache_settings): method name -> cache key -> fields."""

CACHE_SETTINGS = {}
