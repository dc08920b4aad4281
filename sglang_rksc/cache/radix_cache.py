"""The base of the `rksc` radix-cache backend: SGLang's `RadixCache` that reports itself,
counts what eviction frees, and takes branch marks for RSBCM.

`SemanticRadixCache` (semantic.py) builds on it; `sglang_rksc.srt.backend`
builds the live one inside the scheduler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sglang.srt.mem_cache.base_prefix_cache import EvictParams, EvictResult
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixCache, TreeNode

from sglang_rksc.cache.eviction import POLICY_NAME, register_policy
from sglang_rksc.cache.marks import MARK_NAMES, MARKS, BranchMarks, copy_mark, node_mark
from sglang_rksc.cache.request_options import request_options
from sglang_rksc.reuse.hooks import record_release
from sglang_rksc.reuse.store import ReuseStore

BACKEND_NAME = "rksc"


@dataclass
class EvictionStats:
    evictions: int = 0  # calls that freed something
    evicted_tokens: int = 0
    evicted_rejected: int = 0  # ... of which marked rejected
    evicted_finished: int = 0
    evicted_open: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RkscRadixCache(RadixCache):
    """SGLang's `RadixCache`, registered as the `rksc` backend."""

    backend_name = BACKEND_NAME

    def __init__(self, params: CacheInitParams) -> None:
        if params.eviction_policy.lower() == POLICY_NAME:
            register_policy()  # already done in a server process (plugin); here for direct use
        self.marks = BranchMarks(self)
        self.eviction_stats = EvictionStats()
        self._evicting = False
        self.reuse: ReuseStore | None = None  # decode-side reuse, when on (enable_reuse)
        super().__init__(params)

    @classmethod
    def create_simulated(cls, disable: bool = False, mock_allocator: Any = None, page_size: int = 1) -> RkscRadixCache:
        """A cache without memory pools, for unit tests (SGLang's own always builds a `RadixCache`)."""
        params = CacheInitParams(
            disable=disable, req_to_token_pool=None, token_to_kv_pool_allocator=mock_allocator, page_size=page_size
        )
        return cls(params)

    def reset(self) -> None:
        super().reset()
        self.marks.reset()
        if self.reuse is not None:
            self.reuse.reset()

    def enable_reuse(self) -> None:
        self.reuse = ReuseStore(self._attached)

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
            "eviction": {**self.eviction_stats.as_dict(), **self.marks.stats.as_dict()},
            "reuse": {"on": self.reuse is not None, **(self.reuse.stats.as_dict() if self.reuse else {})},
        }

    def _attached(self, node: TreeNode) -> bool:
        """Whether `node` is still in the tree (a deleted leaf keeps its fields)."""
        while node is not self.root_node:
            parent = node.parent
            if parent is None or parent.children.get(node.key.child_key(self.page_size)) is not node:
                return False
            node = parent
        return True

    # ------------------------------------------------------------------ eviction

    def evict(self, params: EvictParams) -> EvictResult:
        self._evicting = True
        try:
            result = super().evict(params)
        finally:
            self._evicting = False
        if result.num_tokens_evicted:
            self.eviction_stats.evictions += 1
            self.eviction_stats.evicted_tokens += result.num_tokens_evicted
        return result

    def _delete_leaf(self, node: TreeNode) -> None:
        if self._evicting:
            field = f"evicted_{MARK_NAMES[node_mark(node)]}"
            setattr(self.eviction_stats, field, getattr(self.eviction_stats, field) + len(node.key))
        super()._delete_leaf(node)

    def _split_node(self, key: Any, child: TreeNode, split_len: int) -> TreeNode:
        new_node = super()._split_node(key, child, split_len)
        copy_mark(child, new_node)
        return new_node

    # ------------------------------------------------------------------ marks

    def on_release(self, req: Any, *, checkpointed: bool) -> None:
        super().on_release(req, checkpointed=checkpointed)
        if self.disable:
            return
        self.marks.remember(req)
        if self.reuse is not None:
            record_release(self.reuse, req, self._attached)
        mark = request_options(req).get("mark")
        if mark in MARKS:
            self.marks.mark_request(req, MARKS[mark])

    def mark(self, rids: list[str], mark: str) -> int:
        """Mark the branches generated by these (released) requests; returns the tokens marked."""
        if self.disable:
            return 0
        return self.marks.mark_rids(rids, MARKS[mark])
