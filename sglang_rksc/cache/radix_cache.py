"""The base of the `rksc` radix-cache backend: SGLang's `RadixCache` that reports itself.

`SemanticRadixCache` (semantic.py) builds on it; `sglang_rksc.srt.backend`
builds the live one inside the scheduler.
"""

from __future__ import annotations

from typing import Any

from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixCache

BACKEND_NAME = "rksc"


class RkscRadixCache(RadixCache):
    """SGLang's `RadixCache`, registered as the `rksc` backend."""

    backend_name = BACKEND_NAME

    @classmethod
    def create_simulated(cls, disable: bool = False, mock_allocator: Any = None, page_size: int = 1) -> RkscRadixCache:
        """A cache without memory pools, for unit tests (SGLang's own always builds a `RadixCache`)."""
        params = CacheInitParams(
            disable=disable, req_to_token_pool=None, token_to_kv_pool_allocator=mock_allocator, page_size=page_size
        )
        return cls(params)

    def describe(self) -> dict[str, Any]:
        """Plain-data summary of the live cache, for `/server_info`."""
        return {
            "backend": self.backend_name,
            "impl": type(self).__name__,
            "disabled": bool(self.disable),
            "page_size": self.page_size,
            "eviction_policy": self.eviction_policy,
            "evictable_tokens": int(self.evictable_size()),
            "protected_tokens": int(self.protected_size()),
        }
