"""The `rksc` backend as a cache object and as a registered plugin (no server)."""

from __future__ import annotations

from array import array

import torch
from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey

from sglang_rksc.cache.radix_cache import BACKEND_NAME, RkscRadixCache
from sglang_rksc.config import RkscConfig
from sglang_rksc.srt import plugin, server_info
from sglang_rksc.srt.backend import build_tree_cache
from sglang_rksc.srt.features import feature_factories


def _exercise(cache: RadixCache) -> list:
    """Insert two sequences sharing a prefix, then match a third; return what was observed."""
    seen = []
    for tokens, slots in (([1, 2, 3, 4], [10, 11, 12, 13]), ([1, 2, 7], [20, 21, 22])):
        key = RadixKey(array("q", tokens))
        seen.append(cache.insert(InsertParams(key=key, value=torch.tensor(slots, dtype=torch.int64))).prefix_len)
    match = cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", [1, 2, 3, 9]))))
    seen.append(match.device_prefix_len)
    seen.append(cache.path_device_indices(match.last_device_node).tolist())
    seen.append((cache.total_size(), cache.evictable_size(), cache.protected_size()))
    return seen


def test_behaves_like_sglang_radix_cache():
    ours, theirs = RkscRadixCache.create_simulated(), RadixCache.create_simulated()
    assert type(ours) is RkscRadixCache
    observed = _exercise(ours)
    assert observed == _exercise(theirs)
    # The shared prefix [1, 2] is stored once: the second insert found 2 tokens already there.
    assert observed[:4] == [0, 2, 3, [10, 11, 12]]
    assert observed[4] == (5, 5, 0)


def test_describe_reports_the_backend():
    cache = RkscRadixCache.create_simulated(features=feature_factories(RkscConfig()))
    _exercise(cache)
    described = cache.describe()
    eviction, reuse = described.pop("eviction"), described.pop("reuse")
    assert described == {
        "backend": "rksc",
        "impl": "RkscRadixCache",
        "disabled": False,
        "page_size": 1,
        "eviction_policy": "lru",
        "evictable_tokens": 5,
        "protected_tokens": 0,
        "semantic": False,
        "span_embeddings": False,
    }
    assert eviction["evicted_tokens"] == 0 and eviction["marks_requests_marked"] == 0
    assert reuse == {"on": False}


def test_plugin_registers_the_backend_once():
    from sglang.srt.mem_cache.registry import get_radix_cache_factory

    plugin.register()
    plugin.register()  # SGLang may load plugins more than once per process
    assert get_radix_cache_factory(BACKEND_NAME) is build_tree_cache


def test_describe_falls_back_for_other_caches():
    assert server_info.describe_tree_cache(RadixCache.create_simulated()) == {"backend": None, "impl": "RadixCache"}
