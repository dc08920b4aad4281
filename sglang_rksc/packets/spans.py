"""Where a packet is: in the request's prompt (a run of its tokens), and in the radix tree (a cached run of the
same tokens in the request's namespace, with its KV slots and positions). Read-only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sglang_rksc.cache.tree_paths import Namespace, namespace

MIN_PACKET_TOKENS = 8  # shorter spans are computed: a copy would save too little to be worth a lookup


@dataclass(frozen=True)
class PromptSpan:
    start: int  # first prompt position of the packet
    tokens: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


@dataclass(frozen=True)
class CachedSpan:
    position: int  # the cached run's first position on its own path
    slots: torch.Tensor  # its KV slots, one per token


def find_run(haystack: Sequence[int], needle: Sequence[int], start: int = 0) -> int:
    """The first index >= start where `needle` occurs in `haystack`, or -1."""
    n = len(needle)
    if n == 0:
        return -1
    first = needle[0]
    for i in range(start, len(haystack) - n + 1):
        if haystack[i] == first and tuple(haystack[i : i + n]) == tuple(needle):
            return i
    return -1


def locate(prompt: Sequence[int], packets: Sequence[Sequence[int]]) -> list[PromptSpan]:
    """The packets' runs in the prompt, in order and not overlapping. A packet tokenised alone may differ from
    the prompt at its two ends (merges across the boundary), so its inner tokens are tried next."""
    spans, cursor = [], 0
    for packet in packets:
        for candidate in (tuple(packet), tuple(packet[1:-1])):
            if len(candidate) < MIN_PACKET_TOKENS:
                continue
            at = find_run(prompt, candidate, cursor)
            if at >= 0:
                spans.append(PromptSpan(at, candidate))
                cursor = at + len(candidate)
                break
    return spans


def find_cached(cache: Any, tokens: Sequence[int], space: Namespace) -> CachedSpan | None:
    """A cached run of `tokens` in `cache` (SGLang's radix tree), in namespace `space`: the first found, depth
    first. Only nodes of that namespace are read, so one tenant's KV never serves another."""
    want = tuple(tokens)
    n = len(want)
    for top in cache.root_node.children.values():
        if namespace(top.key) != space:
            continue
        found = _search(top, want, n, [], [])
        if found is not None:
            return found
    return None


def _search(node: Any, want: tuple[int, ...], n: int, path: list[int], slots: list[torch.Tensor]) -> CachedSpan | None:
    own = list(node.key.raw_token_ids())
    before = len(path)
    path.extend(own)
    slots.append(node.value)
    try:
        # Only runs that end inside this node are new here.
        lo = max(0, before - n + 1)
        at = find_run(path, want, lo)
        if at >= 0:
            values = torch.cat(slots)[at : at + n]
            return CachedSpan(at, values.clone())
        for child in node.children.values():
            found = _search(child, want, n, path, slots)
            if found is not None:
                return found
        return None
    finally:
        del path[before:]
        slots.pop()
