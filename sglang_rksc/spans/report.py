"""Span vectors: at release, the pooled hidden states of a generation's output go into its response.

A release observer of the `rksc` cache (`--rksc-span-embeddings on`): the states
its forwards already captured for the output's KV slots (no extra forward), read
off the tree path, pooled, and sent as `meta_info["rksc_span"]` for the
frontend's `merge_branches`. Read-only; it runs before the reuse record (so a
replayed twin carries the vector) and before dedupe (which may free the slots).
"""

from __future__ import annotations

from typing import Any

import torch

from sglang_rksc.cache import span_vector, tree_paths
from sglang_rksc.cache.embeddings import SlotStates
from sglang_rksc.cache.feature import CacheFeature
from sglang_rksc.wire import Meta, put_meta


class SpanReport(CacheFeature):
    name = "span_report"

    def describe(self) -> dict[str, Any]:
        return {"span_embeddings": True}

    def __init__(self, cache: Any, states: SlotStates) -> None:
        self.cache = cache
        self.states = states

    def output_slots(self, req: Any) -> torch.Tensor | None:
        """KV slots of the request's output as the tree holds them now (its last token has none)."""
        if req.last_node is None or not tree_paths.attached(self.cache, req.last_node):
            return None
        path = self.cache.path_device_indices(req.last_node)
        prompt_len = len(req.origin_input_ids)
        return path[prompt_len:] if len(path) > prompt_len else None

    def on_release(self, req: Any, checkpointed: bool) -> None:
        if not checkpointed:
            return
        slots = self.output_slots(req)
        embedding = None if slots is None else self.states.span_embedding(slots)
        if embedding is not None:
            put_meta(req, Meta.SPAN, span_vector.encode(embedding, self.states.weights, tokens=int(slots.numel())))
