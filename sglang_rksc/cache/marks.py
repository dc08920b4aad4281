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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

REJECTED, FINISHED, OPEN = 0, 1, 2
MARKS = {"rejected": REJECTED, "finished": FINISHED}
MARK_NAMES = {REJECTED: "rejected", FINISHED: "finished", OPEN: "open"}
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


@dataclass
class MarkStats:
    requests_marked: int = 0
    requests_unknown: int = 0  # never seen, or forgotten (REMEMBERED_REQUESTS)
    requests_gone: int = 0  # their path was evicted or deduplicated before the mark came
    nodes_marked: int = 0
    tokens_marked: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f"marks_{k}": v for k, v in asdict(self).items()}


MARK_KEY = "rksc_mark"  # the set_internal_state key prefix: rksc_mark/<mark>/<rid>


def mark_request_args(rids: Sequence[str], mark: str) -> dict[str, int]:
    """The `server_args` of a `/set_internal_state` call marking `rids` (its values must be
    numbers, so the mark and the rids travel in the keys)."""
    if mark not in MARKS:
        raise ValueError(f"mark must be one of {', '.join(MARKS)}, got {mark!r}")
    bad = [r for r in rids if not isinstance(r, str) or not r or "/" in r]
    if bad or not rids:
        raise ValueError(f"request ids must be non-empty strings without '/', got {list(rids)!r}")
    return {f"{MARK_KEY}/{mark}/{rid}": 1 for rid in rids}


def is_mark_request(server_args: dict[str, Any]) -> bool:
    return any(k.startswith(MARK_KEY + "/") for k in server_args)


def parse_mark_request(server_args: dict[str, Any]) -> tuple[list[str], str]:
    """(rids, mark) of a `/set_internal_state` payload made by `mark_request_args`; ValueError if bad."""
    rids, marks = [], set()
    for key in server_args:
        prefix, _, rest = key.partition("/")
        mark, _, rid = rest.partition("/")
        if prefix != MARK_KEY or mark not in MARKS or not rid or "/" in rid:
            raise ValueError(f"{MARK_KEY}: bad key {key!r} (expected {MARK_KEY}/<{'|'.join(MARKS)}>/<rid>)")
        marks.add(mark)
        rids.append(rid)
    if len(marks) != 1:
        raise ValueError(f"{MARK_KEY}: one mark per call, got {', '.join(sorted(marks))}")
    return rids, marks.pop()


class BranchMarks:
    """The released requests' path ends, and the marking of branches by rid."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.released: OrderedDict[str, Any] = OrderedDict()  # rid -> its last node at release
        self.stats = MarkStats()

    def reset(self) -> None:
        self.released.clear()

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
            elif not self.cache._attached(node):
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
        for node in _subtree(top):
            if set_mark(node, mark, now):
                self.stats.nodes_marked += 1
                self.stats.tokens_marked += len(node.key)


def _path_len(node: Any) -> int:
    n = 0
    while node.parent is not None:
        n += len(node.key)
        node = node.parent
    return n


def _subtree(top: Any) -> Iterable[Any]:
    stack = [top]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.children.values())
