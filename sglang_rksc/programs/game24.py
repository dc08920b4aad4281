"""Game of 24: puzzles, states, and exact checking of proposed steps.

A state is the multiset of numbers still left plus the steps taken. A model's
proposed step ("4 * 6 = 24 (left: 24)") is accepted only if its two operands
are among the numbers left and its arithmetic is exact; the numbers left after
it are computed here, never read from the model.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

DATA_PATH = Path(__file__).resolve().parent / "data" / "game24" / "24.csv"
TARGET = Fraction(24)

_NUM = r"-?\d+(?:\.\d+)?(?:/\d+)?"
_STEP = re.compile(rf"({_NUM})\s*([+\-*/×x÷])\s*({_NUM})\s*=\s*({_NUM})")
_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "×": lambda a, b: a * b,
    "x": lambda a, b: a * b,
    "/": lambda a, b: a / b if b != 0 else None,
    "÷": lambda a, b: a / b if b != 0 else None,
}


@dataclass(frozen=True)
class Puzzle:
    index: int  # row in 24.csv (rank - 1)
    numbers: tuple[int, ...]


@dataclass(frozen=True)
class State:
    left: tuple[Fraction, ...]  # sorted, so equal multisets compare equal
    steps: tuple[str, ...] = ()

    @classmethod
    def start(cls, numbers: tuple[int, ...]) -> State:
        return cls(tuple(sorted(Fraction(n) for n in numbers)))

    @property
    def solved(self) -> bool:
        return self.left == (TARGET,)

    @property
    def done(self) -> bool:
        return len(self.left) == 1

    def left_text(self) -> str:
        return " ".join(format_number(x) for x in self.left)


def format_number(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _parse_number(text: str) -> Fraction | None:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def apply_step(state: State, line: str) -> State | None:
    """The state after the first step written in `line`, or None if it is not a valid step here."""
    found = _STEP.search(line)
    if not found:
        return None
    a, op, b, claimed = found.groups()
    a, b, claimed = _parse_number(a), _parse_number(b), _parse_number(claimed)
    if a is None or b is None or claimed is None:
        return None
    result = _OPS[op](a, b)
    if result is None or result != claimed:
        return None
    left = list(state.left)
    for operand in (a, b):
        if operand not in left:
            return None
        left.remove(operand)
    step = f"{format_number(a)} {op} {format_number(b)} = {format_number(result)}"
    return State(tuple(sorted([*left, result])), (*state.steps, step))


def parse_proposals(state: State, text: str, limit: int | None = None) -> list[State]:
    """Valid, distinct next states from a model's list of proposed steps, in the order written."""
    out: list[State] = []
    seen: set[tuple[Fraction, ...]] = set()
    for line in text.splitlines():
        child = apply_step(state, line)
        if child is None or child.left in seen:
            continue
        seen.add(child.left)
        out.append(child)
        if limit is not None and len(out) >= limit:
            break
    return out


def load_puzzles(start: int = 0, count: int | None = None, path: Path = DATA_PATH) -> list[Puzzle]:
    """Puzzles `start` .. `start+count-1` of the ranked list (easiest first)."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    chosen = rows[start:] if count is None else rows[start : start + count]
    if count is not None and len(chosen) < count:
        raise ValueError(f"asked for {count} puzzles from {start}, but {path.name} has only {len(chosen)} there")
    return [Puzzle(start + i, tuple(int(x) for x in row["Puzzles"].split())) for i, row in enumerate(chosen)]
