"""RSBCM: eviction ordered by the reasoning structure (`eviction`), from the branch marks programs send
(`marks`, a feature of the `rksc` cache; `hooks` receives them)."""
