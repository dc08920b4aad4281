"""The drafts' counters: per request (`meta_info["rksc_drafts"]`) and in total (`/server_info`'s `drafts`)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from sglang_rksc.wire import DraftEntry, DraftStats, Meta, put_meta


@dataclass
class RequestDrafts:
    namespace: Hashable
    verify_steps: int = 0
    drafted: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    pending: tuple[str, int] | None = None  # (source, tokens) of the draft in flight

    def add(self, source: str, drafted: int, accepted: int) -> None:
        self.verify_steps += 1
        if drafted:
            self.drafted[source] = self.drafted.get(source, 0) + drafted
            self.accepted[source] = self.accepted.get(source, 0) + accepted

    def attach_to(self, req: Any) -> None:
        entry: DraftEntry = {
            "verify_steps": self.verify_steps,
            "drafted": dict(self.drafted),
            "accepted": dict(self.accepted),
        }
        put_meta(req, Meta.DRAFTS, entry)


class DraftCounters:
    """This scheduler's totals; `describe` is what `/server_info` shows."""

    def __init__(self) -> None:
        self.stats = DraftStats()
        self._worker: Any = None

    def attach(self, worker: Any) -> None:
        self._worker = worker

    @property
    def active(self) -> bool:
        return self._worker is not None

    def record_step(
        self, rows: int, width: int, outcomes: list[tuple[str, int, int, int]], seconds: float | None
    ) -> None:
        """One verify step: per row (source, drafted, accepted, tokens emitted)."""
        s = self.stats
        s.verify_steps += 1
        s.rows += rows
        shape = f"{rows}x{width}"
        s.steps_by_shape[shape] = s.steps_by_shape.get(shape, 0) + 1
        if seconds is not None:
            s.verify_seconds += seconds
        for source, drafted, accepted, emitted in outcomes:
            s.tokens_emitted += emitted
            if not drafted:
                continue
            s.rows_drafted += 1
            s.drafted[source] = s.drafted.get(source, 0) + drafted
            s.accepted[source] = s.accepted.get(source, 0) + accepted
            histogram = s.accepted_histogram.setdefault(source, {})
            histogram[accepted] = histogram.get(accepted, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        if self._worker is not None:
            self.stats.store_tokens = self._worker.store.tokens
            self.stats.store_evicted_tokens = self._worker.store.evicted_tokens
            widths: dict[int, int] = {}  # the width chosen, step by step: from the steps by shape
            for shape, steps in self.stats.steps_by_shape.items():
                width = int(shape.split("x")[1])
                widths[width] = widths.get(width, 0) + steps
            chosen = {str(w): n for w, n in sorted(widths.items())}
            self.stats.length = {**self._worker.length.describe(), "widths_chosen": chosen}
        return self.stats.as_dict()


DRAFTS = DraftCounters()  # one scheduler per process
