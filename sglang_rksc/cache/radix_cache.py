"""The `rksc` radix-cache backend: SGLang's `RadixCache` with this project's features composed in.

`RkscRadixCache` is exactly `RadixCache` for matching, inserting and evicting, plus a list of features
(`feature.CacheFeature`), built by `sglang_rksc.srt.features` from the settings: RSBCM's branch marks, reuse
records, the span report, ASKS, head windows, packets. At each point of a request's path through the tree the
cache calls its features in the list's order; it imports none of them. The cache accepts everything SGLang's
`RadixCache` accepts (its constructor and `create_simulated`), and emits KV events exactly as it does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from sglang.srt.mem_cache.base_prefix_cache import EvictParams, EvictResult, MatchPrefixParams, MatchResult
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixCache, TreeNode

from sglang_rksc.cache import tree_paths
from sglang_rksc.cache.feature import CacheFeature, FeatureList, merge_described
from sglang_rksc.wire import BACKEND_NAME, EvictionStats, Section

# Builds one feature over the cache (its tree, pools and allocator); None when it does not apply.
FeatureFactory = Callable[["RkscRadixCache"], CacheFeature | None]
ADMITTED = "_rksc_admitted"  # set on a request once its first admission was matched


class RkscRadixCache(RadixCache):
    """SGLang's `RadixCache`, registered as the `rksc` backend, with the features `features` builds."""

    backend_name = BACKEND_NAME

    def __init__(self, params: CacheInitParams, features: Sequence[FeatureFactory] = ()) -> None:
        self.features = FeatureList()
        self.eviction_stats = EvictionStats()
        self._evicting = False
        super().__init__(params)
        if not self.disable:
            for build in features:
                feature = build(self)
                if feature is not None:
                    self.features.add(feature)

    @classmethod
    def create_simulated(
        cls,
        disable: bool = False,
        mock_allocator: Any = None,
        page_size: int = 1,
        enable_kv_cache_events: bool = False,
        dynamo_kv_event_format: bool = False,
        kv_event_lora_names: Any = None,
        *,
        features: Sequence[FeatureFactory] = (),
    ) -> RkscRadixCache:
        """A cache without memory pools, for unit tests (SGLang's own always builds a `RadixCache`)."""
        params = CacheInitParams(
            disable=disable,
            req_to_token_pool=None,
            token_to_kv_pool_allocator=mock_allocator,
            page_size=page_size,
            enable_kv_cache_events=enable_kv_cache_events,
            dynamo_kv_event_format=dynamo_kv_event_format,
            kv_event_lora_names=kv_event_lora_names,
        )
        return cls(params, features)

    def attached(self, node: TreeNode) -> bool:
        return tree_paths.attached(self, node)

    def reset(self) -> None:
        super().reset()
        for feature in getattr(self, "features", ()):  # SGLang's constructor resets before features exist
            feature.reset()

    def describe(self) -> dict[str, Any]:
        """Plain-data summary of the live cache, for `/server_info`: the cache's own, then each feature's."""
        out = {
            "backend": self.backend_name,
            "impl": type(self).__name__,
            "disabled": bool(self.disable),
            "page_size": self.page_size,
            "eviction_policy": self.eviction_policy,
            "evictable_tokens": int(self.evictable_size()),
            "protected_tokens": int(self.protected_size()),
            "semantic": False,
            "span_embeddings": False,
            Section.EVICTION: self.eviction_stats.as_dict(),
            Section.REUSE: {"on": False},
        }
        for feature in self.features:
            merge_described(out, feature.describe())
        return out

    # ------------------------------------------------------------------ admission

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        req = params.req
        if req is None:
            return super().match_prefix(params)  # the tree's own re-matches (checkpoint, insert) stay exact
        match = self.admission_match
        if not getattr(req, ADMITTED, False):
            setattr(req, ADMITTED, True)
            for feature in reversed(self.features.overriding("admit")):  # the first one's is the outermost
                match = _wrapped(feature, match)
        return match(params)

    def admission_match(self, params: MatchPrefixParams) -> MatchResult:
        """SGLang's match for a request, with every feature's limits: the key is cut to the shortest
        `limit_match`, then the match to the shortest `cut_match` of its slots. Without a request in
        `params` (a feature's dry run) it only reads the tree."""
        req = params.req
        limiters = self.features.overriding("limit_match") if req is not None else []
        limits = [n for n in (f.limit_match(req) for f in limiters) if n is not None]
        if limits and len(params.key) > min(limits):
            params = dataclasses.replace(params, key=params.key[: min(limits)])
        result = super().match_prefix(params)
        cutters = self.features.overriding("cut_match")
        if not cutters or result.device_prefix_len == 0:
            return result
        slots = self.path_device_indices(result.last_device_node)[: result.device_prefix_len]
        cut = min(f.cut_match(req, slots) for f in cutters)
        if cut >= result.device_prefix_len:
            return result
        return super().match_prefix(dataclasses.replace(params, key=params.key[:cut]))

    # ------------------------------------------------------------------ insertion

    def _insert_cache(self, req: Any, token_ids: Any, **kwargs: Any) -> Any:
        insert = lambda: super(RkscRadixCache, self)._insert_cache(req, token_ids, **kwargs)  # noqa: E731
        for feature in self.features.overriding("insert"):
            insert = _wrapped_insert(feature, req, token_ids, insert)
        return insert()

    # ------------------------------------------------------------------ release

    def on_release(self, req: Any, *, checkpointed: bool) -> None:
        super().on_release(req, checkpointed=checkpointed)
        for feature in self.features:
            feature.on_release(req, checkpointed)

    # ------------------------------------------------------------------ tree changes

    def evict(self, params: EvictParams) -> EvictResult:
        self._evicting = True
        try:
            result = super().evict(params)
        finally:
            self._evicting = False
        if result.num_tokens_evicted:
            self.eviction_stats.evictions += 1
            self.eviction_stats.evicted_tokens += result.num_tokens_evicted
            for feature in self.features:
                feature.on_evicted()
        return result

    def _delete_leaf(self, node: TreeNode) -> None:
        for feature in self.features:  # before SGLang drops the node, while its key and marks are there
            feature.on_delete(node, self._evicting)
        super()._delete_leaf(node)

    def _split_node(self, key: Any, child: TreeNode, split_len: int) -> TreeNode:
        new_node = super()._split_node(key, child, split_len)
        for feature in self.features:
            feature.on_split(child, new_node)
        return new_node

    # ------------------------------------------------------------------ marks

    def mark(self, rids: list[str], mark: str) -> int:
        """Mark the branches generated by these (released) requests; returns the tokens marked."""
        marks = self.features.get("marks")
        return 0 if marks is None else marks.mark(rids, mark)


def _wrapped(feature: CacheFeature, inner: Callable[[MatchPrefixParams], MatchResult]) -> Callable:
    return lambda params: feature.admit(params, inner)


def _wrapped_insert(feature: CacheFeature, req: Any, token_ids: Any, inner: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: feature.insert(req, token_ids, inner)
