"""Head compression's part in the `rksc` cache: matches end where a complete window is, and a request's window
slots follow its tokens into the tree.

A request may continue from a cached position only if its compressed heads' next query finds every stored
position it sees (the sinks and the recent window) in window slots (`windows.complete_prefix`): a match is
cut back to the longest such prefix. Where it was cut, the recomputation keeps a window before the original
match point (the branch point), so the next request diverging there reuses the whole prefix.
"""

from __future__ import annotations

from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

from sglang_rksc.cache import tree_paths
from sglang_rksc.cache.feature import CacheFeature
from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool
from sglang_rksc.rlkv.windows import complete_prefix
from sglang_rksc.wire import Section


class HeadWindows(CacheFeature):
    name = "heads"

    def __init__(self, cache: Any, pool: HeadSplitKVPool) -> None:
        self.cache = cache
        self.pool = pool
        self.cut_matches = 0  # matches cut back to a complete compressed-head window

    def cut_match(self, req: Any, slots: torch.Tensor) -> int:
        complete = complete_prefix(self.pool, slots)
        if req is None:  # a dry run (ASKS checking a donor path): nothing recorded
            return complete
        matched = int(slots.numel())
        self.pool.branch_points[req] = 0 if complete == matched else matched
        if complete < matched:
            self.cut_matches += 1
        return complete

    def insert(self, req: Any, token_ids: Any, insert: Any) -> Any:
        """Where the tree already held a position (the request's slot freed as a duplicate), the tree's slot
        gets the request's window if it had none, so the request keeps every window it needs."""
        cache, pool = self.cache, self.pool
        start = req.kv.cache_protected_len
        own = cache.req_to_token_pool.req_to_token[req.kv.req_pool_idx, start : len(token_ids)].clone()
        held = pool.detach_windows(own)
        radix_key, kv_indices, prefix_len = insert()
        cached = cache.match_prefix(MatchPrefixParams(key=radix_key))
        tree = cache.path_device_indices(cached.last_device_node)[start:]
        pool.attach_windows(torch.cat((tree, own[tree.numel() :])), held)
        return radix_key, kv_indices, prefix_len

    def describe(self) -> dict[str, Any]:
        return {
            Section.HEADS: {
                **self.pool.describe(),
                "window_slots_in_tree": self._tree_window_slots(),
                "matches_cut": self.cut_matches,
            }
        }

    def _tree_window_slots(self) -> int:
        """Window slots held by cached tokens (at idle, every taken window slot is one of these)."""
        root = self.cache.root_node
        return sum(
            int(self.pool.has_window(node.value).sum())
            for node in tree_paths.subtree(root)
            if node is not root and node.value is not None and len(node.value)
        )
