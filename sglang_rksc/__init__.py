"""sglang-rksc: reasoning-aware KV-cache sharing and confident early exit for SGLang.

Importing this package is cheap and does not import SGLang's server.
"""

__version__ = "0.1.0"
