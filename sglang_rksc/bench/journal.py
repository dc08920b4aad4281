"""A benchmark's journal: one JSON line per finished problem, so that a killed run continues where it stopped.

`bench.compare` and `bench.serve` write `journal.jsonl` beside their report. Its first line is the run's
configuration; then, for every finished problem, the row under its key (a mode and repeat, or a mode and
budget) with the server time and counters of its segment so far (a segment: one server's share of a key);
a segment that ends normally closes with its final time and counters. With `--resume` a run reads the
journal back, refuses one written under another configuration (it may add modes, which then run on every
problem, leave recorded ones out, whose rows stay, and raise a setting the benchmark names growable, such as
`compare`'s number of problems), and runs only the problems it lacks. Time
and counters are summed over segments; a killed segment counts up to its last recorded problem (work on
problems then in flight is counted there and again when they rerun).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_NAME = "journal.jsonl"


class JournalError(ValueError):
    """A journal that cannot be continued (another configuration, an unreadable line): one line."""


@dataclass
class KeyTotals:
    """What a key's segments add up to."""

    rows: dict[int, dict[str, Any]] = field(default_factory=dict)  # problem index -> its first recorded row
    seconds: float = 0.0
    server: dict[str, float] = field(default_factory=dict)
    segments: int = 0


def combine_counters(parts: list[dict[str, float]]) -> dict[str, float]:
    """Counters of consecutive segments as one: sums; a peak (`*_max`) the largest; the tree's size the last."""
    out: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            if key.endswith("_max"):
                out[key] = max(out.get(key, value), value)
            elif key == "tree_tokens":
                out[key] = value
            else:
                out[key] = out.get(key, 0.0) + value
    return out


def _canonical(value: Any) -> Any:
    """The configuration as the journal stores it (JSON round trip), so that a read-back compares equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class Journal:
    """Appends records to `path`; with `resume`, first reads back what an earlier run recorded there.

    `growable` names numeric settings a resumed run may raise (never lower): the journal then holds the
    larger value, and the rows already recorded stay."""

    def __init__(self, path: Path, config: dict[str, Any], *, resume: bool, growable: tuple[str, ...] = ()) -> None:
        self.path = path
        self.growable = growable
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        config = _canonical(config)
        if resume and path.exists():
            self._records = self._read(config)
        else:
            if path.exists():  # a fresh run keeps the previous journal aside rather than losing hours of rows
                path.replace(path.with_name(path.name + ".old"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._append({"kind": "config", "config": config})
        self._next_segment = 1 + max((r.get("segment", 0) for r in self._records), default=0)

    def _read(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        records = read_records(self.path)
        stored = records[0]["config"]
        modes = merged_modes(stored.get("modes"), config.get("modes"))
        if modes is not None:
            config = {**config, "modes": modes}
        differ = sorted(
            k
            for k in set(config) | set(stored)
            if config.get(k) != stored.get(k)
            and not (k == "modes" and modes is not None)
            and not (k in self.growable and _raised(stored.get(k), config.get(k)))
        )
        if differ:
            grow = "".join(f", raise {k}" for k in self.growable)
            raise JournalError(
                f"{self.path} was written by a run with other settings ({', '.join(differ)}); "
                f"rerun with those settings (a resumed run may add modes or leave some out{grow}, not change "
                "one), or without --resume to start afresh"
            )
        # The configuration keeps the modes left out and takes in the added. Rewrite without a cut-off last line,
        # so appends start on a fresh line.
        records[0] = {"kind": "config", "config": config}
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        return records[1:]

    def _append(self, record: dict[str, Any]) -> None:
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if record["kind"] != "config":
                self._records.append(record)

    def done(self, key: str) -> set[int]:
        """The problem indexes already recorded under `key`."""
        return {r["index"] for r in self._records if r["kind"] == "row" and r["key"] == key}

    def segment(self, key: str) -> Segment:
        """A new segment of `key`: one server's run of some of its problems."""
        with self._lock:
            number = self._next_segment
            self._next_segment += 1
        return Segment(self, key, number)

    def totals(self, key: str) -> KeyTotals:
        """`key`'s rows (the first recorded per problem) and its segments' time and counters added up."""
        return key_totals(self._records, key)


def _raised(stored: Any, wanted: Any) -> bool:
    """Whether `wanted` is a number at least `stored` (a growable setting kept or raised)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (stored, wanted))
    return numbers and wanted >= stored


def merged_modes(stored: Any, wanted: Any) -> list[Any] | None:
    """A resumed run's modes joined to the recorded ones: the recorded, then those it adds; None when a mode
    named in both differs (the same name with other flags is another mode). An added mode runs on the problems
    already recorded, paired with the others' rows there (a float32 run gains a mechanism without running
    `radix` again); a recorded mode the run leaves out keeps its rows and runs on no problem this run adds
    (a mode already measured stops costing hours)."""
    if not (isinstance(stored, list) and isinstance(wanted, list)):
        return None
    recorded = {mode[0]: mode for mode in stored}
    if any(mode[0] in recorded and mode != recorded[mode[0]] for mode in wanted):
        return None
    return stored + [mode for mode in wanted if mode[0] not in recorded]


def read_records(path: Path) -> list[dict[str, Any]]:
    """A journal's records, its configuration first; a last line that a kill cut short is dropped (its
    problem runs again). JournalError for anything else that is not a journal."""
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise JournalError(f"{path}: line {number} is not JSON") from None
    if not records or records[0].get("kind") != "config":
        raise JournalError(f"{path} has no configuration line; not a journal of this benchmark")
    return records


def key_totals(records: list[dict[str, Any]], key: str) -> KeyTotals:
    """What `key`'s records (after the configuration line) add up to."""
    out = KeyTotals()
    last: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("key") != key:
            continue
        if record["kind"] == "row":
            out.rows.setdefault(record["index"], record["row"])
        last[record["segment"]] = record  # an `end` record comes after its segment's rows
    out.seconds = sum(r["seconds"] for r in last.values())
    out.server = combine_counters([r["server"] for r in last.values()])
    out.segments = len(last)
    return out


@dataclass
class Segment:
    """Records one server's progress on a key."""

    journal: Journal
    key: str
    number: int

    def row(self, index: int, row: dict[str, Any], seconds: float, server: dict[str, float]) -> None:
        """A finished problem, with the segment's time and counters so far."""
        self.journal._append(
            {"kind": "row", "key": self.key, "segment": self.number, "index": index, "row": row}
            | {"seconds": seconds, "server": server}
        )

    def end(self, seconds: float, server: dict[str, float]) -> None:
        """The segment ran to its end: its final time and counters."""
        self.journal._append(
            {"kind": "end", "key": self.key, "segment": self.number, "seconds": seconds, "server": server}
        )


def by_index(rows: dict[int, dict[str, Any]], order: list[int]) -> list[dict[str, Any]]:
    """Rows in the problems' order, those not recorded left out."""
    return [rows[i] for i in order if i in rows]
