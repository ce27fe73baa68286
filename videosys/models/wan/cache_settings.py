"""Wan's published cache settings: method name -> cache key -> that method's config fields (filled below)."""

CACHE_SETTINGS: dict = {}


def cache_models(kind: str) -> tuple[str, ...]:
    """A release's cache keys, most specific first: "wan2.1-t2v-1.3B", ..., then "wan"."""
    return (f"wan-{kind}", "wan")
