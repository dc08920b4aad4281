"""The programs' optional gather step (`--aggregate usc`): one prompt lists the kept branches' answers and asks
which final answer is the most consistent (universal self-consistency). With `--packets on` (the default) the
branches are marked as packets, so a server with `--rksc-packets on` copies their KV instead of computing it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from sglang_rksc.programs import gsm8k

AGGREGATES = ("vote", "usc")


def add_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--aggregate",
        choices=AGGREGATES,
        default="vote",
        help="'usc': after the vote, one more prompt gathers the kept solutions and asks for the most "
        "consistent answer (reported as usc_accuracy beside the vote)",
    )
    group.add_argument(
        "--packets",
        choices=["on", "off"],
        default="on",
        help="mark the gathered solutions as packets (a server with --rksc-packets on reuses their KV); "
        "'off' computes the gather prompt in full",
    )


def gather_answer(state: Any, solutions: Sequence[str], *, max_tokens: int, packets: bool) -> dict[str, Any]:
    """Run the gather step after `state` (the question) and return what a row keeps of it."""
    from sglang_rksc.lang.gather import gather

    result = gather(state, solutions, max_tokens=max_tokens, temperature=0.0, reuse=packets)
    info = result.packets or {}
    meta = result.meta_info
    return {
        "text": result.text,
        "prediction": gsm8k.extract_answer(result.text),
        "prompt_tokens": int(meta.get("prompt_tokens", 0)),
        "cached_tokens": int(meta.get("cached_tokens", 0)),
        "tokens_not_computed": result.tokens_not_computed,
        "spans_reused": len(info.get("reused", [])),
        "spans_missed": int(info.get("missed", 0)),
        "note": result.note,
    }


def score(gathered: Mapping[str, Any] | None, gold: Any) -> dict[str, Any]:
    """The row's fields for the gather step (none without it)."""
    if gathered is None:
        return {}
    return {"usc_prediction": gathered["prediction"], "usc_correct": gathered["prediction"] == gold, "usc": dict(gathered)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    gathered = [r["usc"] for r in rows if r.get("usc")]
    if not gathered:
        return {}
    computed = sum(g["prompt_tokens"] - g["cached_tokens"] - g["tokens_not_computed"] for g in gathered)
    return {
        "usc_accuracy": sum(bool(r.get("usc_correct")) for r in rows) / len(gathered),
        "gather_prompt_tokens": sum(g["prompt_tokens"] for g in gathered),
        "gather_prompt_tokens_computed": computed,
        "gather_tokens_not_computed": sum(g["tokens_not_computed"] for g in gathered),
        "gather_spans_reused": sum(g["spans_reused"] for g in gathered),
    }
