"""GSM8K: loading problems, extracting numeric answers, voting."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DATA_PATH = Path(__file__).resolve().parent / "data" / "gsm8k" / "test.jsonl"

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
# Phrases after which a model states its final answer, strongest first.
_FINAL_PATTERNS = [
    re.compile(r"####\s*(" + _NUMBER + ")"),
    re.compile(r"answer is[:\s]*\**\s*(" + _NUMBER + ")", re.IGNORECASE),
    re.compile(r"answer[:\s]+\**\s*(" + _NUMBER + ")", re.IGNORECASE),
]


@dataclass(frozen=True)
class Problem:
    index: int  # row in test.jsonl: 0-299 calibrate, 300+ report
    question: str
    answer: str  # the gold final number, normalised


def normalize_number(text: str) -> str | None:
    """'$1,234.50' -> '1234.5', '18.00' -> '18'; None if it is not a number."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return repr(value)


def gold_answer(answer_field: str) -> str:
    """The number after '#### ' in a GSM8K answer field."""
    _, sep, tail = answer_field.rpartition("####")
    number = normalize_number(tail) if sep else None
    if number is None:
        raise ValueError(f"GSM8K answer without a final '#### <number>': {answer_field[-80:]!r}")
    return number


def extract_answer(text: str) -> str | None:
    """The final number a solution states: after '####' or 'answer is', else the last number."""
    for pattern in _FINAL_PATTERNS:
        found = pattern.findall(text)
        if found:
            return normalize_number(found[-1])
    numbers = re.findall(_NUMBER, text)
    return normalize_number(numbers[-1]) if numbers else None


def load_rows(start: int = 0, count: int | None = None, path: Path = DATA_PATH) -> list[tuple[int, dict]]:
    """Rows `start` .. `start+count-1` of the GSM8K test split as (index, {"question", "answer"})."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            if index < start:
                continue
            if count is not None and len(rows) >= count:
                break
            rows.append((index, json.loads(line)))
    if count is not None and len(rows) < count:
        raise ValueError(f"asked for {count} problems from {start}, but {path.name} has only {len(rows)} there")
    return rows


def load_problems(start: int = 0, count: int | None = None, path: Path = DATA_PATH) -> list[Problem]:
    """Problems `start` .. `start+count-1` of the GSM8K test split."""
    return [Problem(index, row["question"], gold_answer(row["answer"])) for index, row in load_rows(start, count, path)]


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> str | None:
    """The answer with the largest total weight; ties go to the one seen first; None answers do not vote."""
    weights = [1.0] * len(answers) if weights is None else list(weights)
    if len(weights) != len(answers):
        raise ValueError("one weight per answer")
    totals: dict[str, float] = defaultdict(float)
    for answer, weight in zip(answers, weights, strict=True):
        if answer is not None:
            totals[answer] += weight
    if not totals:
        return None
    best = max(totals.values())
    return next(a for a in answers if a is not None and totals[a] == best)
