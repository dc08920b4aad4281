"""Read-only questions about SGLang's radix tree: is a node still in it, what path lies below or above it.

Functions over `TreeNode`s (duck-typed: `parent`, `children`, `key`, `value`,
`lock_ref`) and the cache that owns them (`root_node`, `page_size`); nothing
here changes the tree.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from typing import Any

Namespace = tuple[Any, Any]  # (extra_key, cache_salt): what a cached path may serve


def namespace(key: Any) -> Namespace:
    return key.extra_key, key.cache_salt


def attached(cache: Any, node: Any) -> bool:
    """Whether `node` is still in the tree (a deleted leaf keeps its fields)."""
    while node is not cache.root_node:
        parent = node.parent
        if parent is None or parent.children.get(node.key.child_key(cache.page_size)) is not node:
            return False
        node = parent
    return True


def has_path(cache: Any, node: Any, tokens: Sequence[int], space: Namespace) -> bool:
    """Whether `tokens` are cached below `node`, in namespace `space` (without splitting anything)."""
    from sglang.srt.mem_cache.radix_cache import RadixKey

    rest = RadixKey(array("q", tokens), extra_key=space[0], cache_salt=space[1])
    while len(rest) > 0:
        child = node.children.get(rest.child_key(cache.page_size))
        if child is None:
            return False
        matched = child.key.match(rest, page_size=cache.page_size)
        if matched == len(rest):
            return True
        if matched < len(child.key):
            return False
        node, rest = child, rest[matched:]
    return True


def chain_below(node: Any) -> list[Any]:
    """`node` and the single-child chain below it (where its path goes on without branching)."""
    chain = [node]
    while len(chain[-1].children) == 1:
        chain.append(next(iter(chain[-1].children.values())))
    return chain


def span_above(cache: Any, leaf: Any) -> list[Any]:
    """The unlocked nodes above `leaf` up to its branch point (top first): the span it ends."""
    chain = [leaf]
    parent = leaf.parent
    while parent is not cache.root_node and len(parent.children) == 1 and parent.lock_ref == 0:
        chain.append(parent)
        parent = parent.parent
    chain.reverse()
    return chain


def tokens_of(chain: Sequence[Any]) -> tuple[int, ...]:
    """The tokens of consecutive nodes."""
    return tuple(t for node in chain for t in node.key.raw_token_ids())


def subtree(top: Any) -> Iterator[Any]:
    """`top` and every node below it (depth first)."""
    stack = [top]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children.values())
