"""What the server remembers of finished deterministic requests, and who waits for a running one.

A record is tied to the tree: it holds the output's last node, and is valid
only while that node is still in the tree (so the whole path is: eviction
and deduplication only ever remove leaves). A record whose path is gone is
dropped and the request computed again, never answered with less. Records
and leaders are keyed by `signature.reuse_key`, which holds the request's
namespace (`extra_key`, `cache_salt`): nothing is shared across tenants.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sglang_rksc.cache.feature import CacheFeature
from sglang_rksc.wire import NOT_REPLAYED, ReuseStats, Section

REMEMBERED_RESULTS = 16384
KEY_ATTR = "_rksc_reuse_key"  # on a request: its reuse key, once the scheduler hook computed it


@dataclass(frozen=True)
class Record:
    output_ids: tuple[int, ...]
    finished_reason: Any
    finished_len: int | None
    customized_info: dict[str, Any]  # our request-level meta_info (e.g. the CGEE verdict)
    node: Any  # the last node of the path the request left in the tree
    rid: str  # the request that produced it


class ReuseStore(CacheFeature):
    """A feature of the `rksc` cache (`--rksc-reuse on`); the scheduler hooks (`hooks`) read and fill it."""

    name = "reuse"

    def __init__(self, attached: Callable[[Any], bool]) -> None:
        self.attached = attached
        self.records: OrderedDict[tuple, Record] = OrderedDict()
        self.leaders: dict[tuple, Any] = {}  # key -> the running request
        self.followers: dict[tuple, list[Any]] = {}  # key -> requests waiting for it
        self.ready: list[tuple[tuple, Any]] = []  # followers whose leader finished
        self.stats = ReuseStats()

    def reset(self) -> None:
        """The tree was flushed: every record's path is gone (waiting followers stay)."""
        self.records.clear()

    def describe(self) -> dict[str, Any]:
        return {Section.REUSE: {"on": True, **self.stats.as_dict()}}

    def lookup(self, key: tuple) -> Record | None:
        record = self.records.get(key)
        if record is None:
            return None
        if not self.attached(record.node):
            del self.records[key]
            self.stats.invalidated += 1
            return None
        self.records.move_to_end(key)
        return record

    def on_release(self, req: Any, checkpointed: bool) -> None:
        """Release observer: record the request's result (finished, not aborted, its path still in
        the tree) and free its followers."""
        key = getattr(req, KEY_ATTR, None)
        if key is None:
            return
        node = req.last_node
        aborted = req.finished_reason is not None and req.finished_reason.to_json().get("type") == "abort"
        done = req.finished() and not aborted
        if done and node is not None and self.attached(node) and len(req.output_ids) > 0:
            self.record(key, req, node)
        self.leader_done(key, req)

    def record(self, key: tuple, req: Any, node: Any) -> None:
        info = {k: copy.deepcopy(v) for k, v in (req.customized_info or {}).items() if k not in NOT_REPLAYED}
        self.records[key] = Record(
            tuple(req.output_ids), copy.copy(req.finished_reason), req.finished_len, info, node, req.rid
        )
        self.records.move_to_end(key)
        self.stats.recorded += 1
        while len(self.records) > REMEMBERED_RESULTS:
            self.records.popitem(last=False)

    # ---------------------------------------------------------------- coalescing

    def leader(self, key: tuple) -> Any | None:
        return self.leaders.get(key)

    def lead(self, key: tuple, req: Any) -> None:
        self.leaders[key] = req

    def follow(self, key: tuple, req: Any) -> None:
        self.followers.setdefault(key, []).append(req)

    def leader_done(self, key: tuple, req: Any) -> None:
        """`req` finished (or was aborted): its followers are served at the next drain."""
        if self.leaders.get(key) is req:
            del self.leaders[key]
            self.ready.extend((key, f) for f in self.followers.pop(key, ()))

    def stale_leaders(self) -> list[tuple]:
        """Leaders that finished without being released through the tree (aborted while queued)."""
        return [key for key, req in self.leaders.items() if req.finished() and key in self.followers]

    def take_ready(self) -> list[tuple[tuple, Any]]:
        ready, self.ready = self.ready, []
        return ready

    def waiting(self) -> int:
        return sum(len(v) for v in self.followers.values()) + len(self.ready)
