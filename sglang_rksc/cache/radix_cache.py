"""The `rksc` radix-cache backend: SGLang's `RadixCache` with this project's features composed in.

`RkscRadixCache` is exactly `RadixCache` for matching, inserting and evicting,
plus components, each present only when its feature is on:

- `marks` (always): RSBCM branch marks, by rid or by a request's own option;
- `reuse` (`--rksc-reuse on`): records of finished deterministic requests;
- `span_report` (`--rksc-span-embeddings on`): the output's pooled states in its response;
- `asks` (`--rksc-semantic on`): semantic fork at admission and dedupe at release;
- `packets` (`--rksc-packets on`): marked prompt spans copied from cached KV (`sglang_rksc.packets`).

What happens when a request is released is one explicit, ordered list of
observers (`release_observers`), not an order kept across subclasses:
span report (reads the output's slots), marks, reuse record (so a replay carries
the span vector), ASKS dedupe (last: it may free the span). The cache accepts
everything SGLang's `RadixCache` accepts (its constructor and `create_simulated`),
and emits KV events exactly as it does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, EvictResult, MatchPrefixParams, MatchResult
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixCache, TreeNode

from sglang_rksc.cache import tree_paths
from sglang_rksc.cache.asks import request_edit
from sglang_rksc.cache.asks.sharing import SemanticSharing
from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.cache.eviction import register_policy
from sglang_rksc.cache.marks import MARK_NAMES, MARKS, BranchMarks, copy_mark, node_mark
from sglang_rksc.cache.span_report import SpanReport
from sglang_rksc.config import RkscConfig
from sglang_rksc.packets import soft_tokens
from sglang_rksc.reuse.store import ReuseStore
from sglang_rksc.rlkv.windows import complete_prefix
from sglang_rksc.rlkv.windows import pool_of as head_split_pool
from sglang_rksc.wire import BACKEND_NAME, EVICTION_POLICY, EvictionStats, Section

ReleaseObserver = Callable[[Any, bool], None]  # (req, checkpointed)


class RkscRadixCache(RadixCache):
    """SGLang's `RadixCache`, registered as the `rksc` backend, with the features of `config`."""

    backend_name = BACKEND_NAME

    def __init__(
        self,
        params: CacheInitParams,
        config: RkscConfig | None = None,
        *,
        states: SlotStates | None = None,
        probe: TokenProbe | None = None,
        context_len: int | None = None,
    ) -> None:
        if params.eviction_policy.lower() == EVICTION_POLICY:
            register_policy()  # already done in a server process (plugin); here for direct use
        self.config = config or RkscConfig()
        self.marks = BranchMarks(self)
        self.eviction_stats = EvictionStats()
        self._evicting = False
        self.head_split_cut_matches = 0  # matches cut back to a complete compressed-head window
        self.reuse: ReuseStore | None = None
        self.span_report: SpanReport | None = None
        self.asks: SemanticSharing | None = None
        self.packets: Any = None  # PacketReuse, set by the backend factory with --rksc-packets on
        super().__init__(params)
        if not self.disable:
            if self.config.reuse:
                self.reuse = ReuseStore(self.attached)
            if self.config.span_embeddings and states is not None:
                self.span_report = SpanReport(self, states)
            if self.config.semantic.on and states is not None:
                self.asks = SemanticSharing(self, self.config.semantic, states, probe, context_len)
        self.release_observers: list[ReleaseObserver] = [
            observer.on_release
            for observer in (self.span_report, self.marks, self.reuse, self.asks)
            if observer is not None and not self.disable
        ]

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
        config: RkscConfig | None = None,
        states: SlotStates | None = None,
        probe: TokenProbe | None = None,
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
        return cls(params, config, states=states, probe=probe)

    @property
    def semantic(self) -> bool:
        return self.asks is not None

    def attached(self, node: TreeNode) -> bool:
        return tree_paths.attached(self, node)

    def reset(self) -> None:
        super().reset()
        for component in (self.marks, self.reuse, self.asks):
            if component is not None:
                component.reset()

    def describe(self) -> dict[str, Any]:
        """Plain-data summary of the live cache, for `/server_info`."""
        out = {
            "backend": self.backend_name,
            "impl": type(self).__name__,
            "disabled": bool(self.disable),
            "page_size": self.page_size,
            "eviction_policy": self.eviction_policy,
            "evictable_tokens": int(self.evictable_size()),
            "protected_tokens": int(self.protected_size()),
            "semantic": self.semantic,
            "span_embeddings": self.span_report is not None,
            Section.EVICTION: {**self.eviction_stats.as_dict(), **self.marks.stats.as_dict()},
            Section.REUSE: {"on": self.reuse is not None, **(self.reuse.stats.as_dict() if self.reuse else {})},
        }
        pool = head_split_pool(self.token_to_kv_pool_allocator)
        if pool is not None:
            out[Section.HEADS] = {
                **pool.describe(),
                "window_slots_in_tree": self._tree_window_slots(pool),
                "matches_cut": self.head_split_cut_matches,
            }
        if self.packets is not None:
            out[Section.PACKETS] = {"on": True, "adapter": self.packets.adapter_name, **self.packets.stats.as_dict()}
        if self.asks is not None:
            described = self.asks.describe()
            out.update(config=described["config"], aliases=described["aliases"])
            out[Section.SEMANTIC] = described["stats"]
        return out

    def _tree_window_slots(self, pool: Any) -> int:
        """Window slots held by cached tokens (at idle, every taken window slot is one of these)."""
        return sum(
            int(pool.has_window(node.value).sum())
            for node in tree_paths.subtree(self.root_node)
            if node is not self.root_node and node.value is not None and len(node.value)
        )

    # ------------------------------------------------------------------ admission

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        req = params.req
        if self.asks is not None and req is not None and request_edit.first_admission(req):
            return self.asks.match_prefix(params, self._admission_match)
        if req is not None:
            return self._admission_match(params)
        return super().match_prefix(params)  # the tree's own re-matches (checkpoint, insert) stay exact

    def _admission_match(self, params: MatchPrefixParams) -> MatchResult:
        """SGLang's match for a request, cut back under head compression to the longest prefix whose
        compressed heads still hold the sinks and window its next token needs (`rlkv.windows`). A request
        with packet soft tokens matches only before its first one (their KV is not its token ids')."""
        limit = soft_tokens.match_limit(params.req)
        if limit is not None and len(params.key) > limit:
            params = dataclasses.replace(params, key=params.key[:limit])
        result = super().match_prefix(params)
        pool = head_split_pool(self.token_to_kv_pool_allocator)
        if pool is None:
            return result
        complete = complete_prefix(pool, self.path_device_indices(result.last_device_node))
        # Where the match was cut, the recomputation keeps a window before the original match point (the
        # branch point), so the next request diverging there reuses the whole prefix.
        params.req.rksc_branch_point = 0 if complete == result.device_prefix_len else result.device_prefix_len
        if complete == result.device_prefix_len:
            return result
        self.head_split_cut_matches += 1
        return super().match_prefix(dataclasses.replace(params, key=params.key[:complete]))

    # ------------------------------------------------------------------ insertion

    def _insert_cache(self, req: Any, token_ids: Any, **kwargs: Any) -> Any:
        """SGLang's insertion; under head compression the request's window slots follow its tokens: where
        the tree already held a position (the request's slot freed as a duplicate) the tree's slot gets
        the request's window if it had none, so the request keeps every window it needs."""
        pool = head_split_pool(self.token_to_kv_pool_allocator)
        if pool is None:
            return super()._insert_cache(req, token_ids, **kwargs)
        start = req.kv.cache_protected_len
        own = self.req_to_token_pool.req_to_token[req.kv.req_pool_idx, start : len(token_ids)].clone()
        held = pool.detach_windows(own)
        radix_key, kv_indices, prefix_len = super()._insert_cache(req, token_ids, **kwargs)
        cached = super().match_prefix(MatchPrefixParams(key=radix_key))
        tree = self.path_device_indices(cached.last_device_node)[start:]
        pool.attach_windows(torch.cat((tree, own[tree.numel() :])), held)
        return radix_key, kv_indices, prefix_len

    # ------------------------------------------------------------------ release

    def on_release(self, req: Any, *, checkpointed: bool) -> None:
        super().on_release(req, checkpointed=checkpointed)
        for observer in self.release_observers:
            observer(req, checkpointed)

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
            if self.asks is not None:
                self.asks.on_evicted()
        return result

    def _delete_leaf(self, node: TreeNode) -> None:
        if self._evicting:
            field = f"evicted_{MARK_NAMES[node_mark(node)]}"
            setattr(self.eviction_stats, field, getattr(self.eviction_stats, field) + len(node.key))
        super()._delete_leaf(node)
        if self.asks is not None:
            self.asks.on_delete(node)

    def _split_node(self, key: Any, child: TreeNode, split_len: int) -> TreeNode:
        new_node = super()._split_node(key, child, split_len)
        copy_mark(child, new_node)
        return new_node

    # ------------------------------------------------------------------ marks

    def mark(self, rids: list[str], mark: str) -> int:
        """Mark the branches generated by these (released) requests; returns the tokens marked."""
        if self.disable:
            return 0
        return self.marks.mark_rids(rids, MARKS[mark])
