"""Branch marks: a program says a branch is rejected or finished, so RSBCM evicts it first.

A branch is named by the requests that generated it (their rids, which the
frontend has in each generation's meta_info). When a request is released the
cache remembers where its path ended. Marking a rid marks that path from
just below its nearest branch point (the deepest ancestor with more than one
child, i.e. where it parted from another cached path), or below a node
someone holds locked, down to its end, and everything below: the part of the
tree that only this branch reached. Shared trunks keep their priority.

Marks order eviction, nothing else: a marked node is freed only when SGLang
evicts under memory pressure, and a locked node is never evicted.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sglang_rksc.cache.feature import CacheFeature
from sglang_rksc.cache.tree_paths import attached, subtree
from sglang_rksc.wire import MARKS as MARK_WIRE_NAMES
from sglang_rksc.wire import MarkStats, Option, Section, request_options

# A mark's rank: eviction takes the smallest first (the wire names, strongest first, then open).
REJECTED, FINISHED, OPEN = 0, 1, 2
MARKS = dict(zip(MARK_WIRE_NAMES, (REJECTED, FINISHED), strict=True))
MARK_NAMES = {**{rank: name for name, rank in MARKS.items()}, OPEN: "open"}
# Node attributes of ours (SGLang's TreeNode has no slots, so they live on the node itself).
MARK_ATTR = "rksc_mark"
MARKED_AT_ATTR = "rksc_marked_at"


def node_mark(node: Any) -> int:
    """The node's effective mark: a mark lapses once a request reads the node after it was set."""
    mark = getattr(node, MARK_ATTR, OPEN)
    if mark == OPEN or node.last_access_time > getattr(node, MARKED_AT_ATTR, math.inf):
        return OPEN
    return mark


def set_mark(node: Any, mark: int, now: float) -> bool:
    """Mark `node` unless it already holds a stronger (smaller) mark; True if it changed."""
    if node_mark(node) <= mark:
        return False
    setattr(node, MARK_ATTR, mark)
    setattr(node, MARKED_AT_ATTR, now)
    return True


def copy_mark(src: Any, dst: Any) -> None:
    """A split node's upper half is the same span: it keeps the mark."""
    if hasattr(src, MARK_ATTR):
        setattr(dst, MARK_ATTR, getattr(src, MARK_ATTR))
        setattr(dst, MARKED_AT_ATTR, getattr(src, MARKED_AT_ATTR))


REMEMBERED_REQUESTS = 8192  # released requests whose paths can still be marked


class BranchMarks(CacheFeature):
    """The released requests' path ends, and the marking of branches by rid; a feature of every `rksc` cache.
    It also counts what eviction freed by mark (the cache's eviction summary)."""

    name = "marks"

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.released: OrderedDict[str, Any] = OrderedDict()  # rid -> its last node at release
        self.stats = MarkStats()

    def reset(self) -> None:
        self.released.clear()

    def describe(self) -> dict[str, Any]:
        return {Section.EVICTION: self.stats.as_dict()}

    def on_delete(self, node: Any, evicting: bool) -> None:
        if evicting:
            stats = self.cache.eviction_stats
            field = f"evicted_{MARK_NAMES[node_mark(node)]}"
            setattr(stats, field, getattr(stats, field) + len(node.key))

    def on_split(self, child: Any, new_node: Any) -> None:
        copy_mark(child, new_node)

    def mark(self, rids: Sequence[str], mark: str) -> int:
        """Mark by its wire name (`/set_internal_state`); returns the tokens newly marked."""
        return self.mark_rids(rids, MARKS[mark])

    def on_release(self, req: Any, checkpointed: bool) -> None:
        """Release observer: remember where the request's path ends (to mark it by rid later), and
        mark it now if its own options ask for it."""
        self.remember(req)
        mark = request_options(req).get(Option.MARK)
        if mark in MARKS:
            self.mark_request(req, MARKS[mark])

    def remember(self, req: Any) -> None:
        node = req.last_node
        if node is None or node is self.cache.root_node:
            return
        self.released[req.rid] = node
        self.released.move_to_end(req.rid)
        while len(self.released) > REMEMBERED_REQUESTS:
            self.released.popitem(last=False)

    def mark_rids(self, rids: Sequence[str], mark: int) -> int:
        """Mark the branches these requests generated; returns the tokens newly marked."""
        now = time.monotonic()
        before = self.stats.tokens_marked
        for rid in rids:
            node = self.released.get(rid)
            if node is None:
                self.stats.requests_unknown += 1
            elif not attached(self.cache, node):
                self.stats.requests_gone += 1
            else:
                self.stats.requests_marked += 1
                self._mark_subtree(self._branch_top(node), mark, now)
        return self.stats.tokens_marked - before

    def mark_request(self, req: Any, mark: int) -> None:
        """Mark the branch of a request being released (its own `custom_params` asked for it)."""
        node = req.last_node
        if node is not None and node is not self.cache.root_node:
            self.stats.requests_marked += 1
            self._mark_subtree(self._branch_top(node), mark, time.monotonic())

    def _branch_top(self, node: Any) -> Any:
        """The top of the branch `node` ends: up to, not including, the nearest branch point (a node
        with more than one child), a locked node (someone is reading it now) or the root."""
        top = node
        while top.parent is not self.cache.root_node and len(top.parent.children) == 1 and top.parent.lock_ref == 0:
            top = top.parent
        return top

    def _mark_subtree(self, top: Any, mark: int, now: float) -> None:
        for node in subtree(top):
            if set_mark(node, mark, now):
                self.stats.nodes_marked += 1
                self.stats.tokens_marked += len(node.key)
