"""sglang-rksc: reasoning-aware KV-cache sharing and confident early exit for SGLang.

Importing this package is cheap and does not import SGLang's server.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `from sglang_rksc import verify, Gate, mark_branch, merge_branches` loads the frontend primitives on first use.
    if name in ("verify", "Gate", "mark_branch", "merge_branches"):
        from sglang_rksc import lang

        return getattr(lang, name)
    raise AttributeError(f"module 'sglang_rksc' has no attribute {name!r}")
