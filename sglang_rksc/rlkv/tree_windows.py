"""Window slots the radix tree can give back without evicting a token: those of its interior nodes.

Every cached node ends with a complete window (`windows`), which is what lets a request continue from
that end. For a node with children, that window serves only a request that diverges exactly at its end;
a request that continues into a child needs the child's end window instead. So when the window pool runs
short, the windows of unlocked interior nodes go first (least recently used first), and only then are
leaves evicted with their tokens. What such a node loses: a later match ending at it is cut back by
`complete_prefix` and recomputes at most the node. What it keeps: every token, for matches through it.

A position is dropped only where no child's end window reaches back to it (a child shorter than the kept
window needs the tail of its parent), and never among the sinks, which every longer match needs.
"""

from __future__ import annotations

from typing import Any

from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool


def interior_window_spans(root: Any, pool: HeadSplitKVPool) -> list[tuple[float, Any, int, int]]:
    """(last access, node, first, last) of each unlocked interior node's positions whose window slots may be
    dropped, as offsets into the node's slots; least recently used first."""
    layout = pool.layout
    spans = []
    stack = [(root, 0)]
    while stack:
        node, start = stack.pop()
        end = start + len(node.key) if node is not root else 0
        stack.extend((child, end) for child in node.children.values())
        if node is root or not node.children or node.lock_ref > 0 or node.value is None:
            continue
        shortest_child = min(len(child.key) for child in node.children.values())
        first = max(start, layout.sink)
        last = min(end, end + shortest_child - layout.kept_window)
        if last > first:
            spans.append((node.last_access_time, node, first - start, last - start))
    spans.sort(key=lambda span: span[0])
    return spans


def drop_interior_windows(root: Any, pool: HeadSplitKVPool, need: int) -> int:
    """Give back window slots of unlocked interior nodes, least recently used first, until `need` are given
    back or none is left; the number given back."""
    dropped = 0
    for _, node, first, last in interior_window_spans(root, pool):
        if dropped >= need:
            break
        slots = node.value[first:last]
        held = int(pool.has_window(slots).sum())
        if held:
            pool.drop_windows(slots)
            dropped += held
    pool.interior_windows_dropped += dropped
    return dropped
