"""ASKS: radix nodes that also match approximately (fork at admission, dedupe at release).

`planning` decides on token lists alone, `request_edit` is the one place that edits
SGLang's `Req`, `aliases` keeps what dedupe recorded, and `sharing` puts them
together as a component of the `rksc` cache (`sglang_rksc.cache.radix_cache`).
"""
