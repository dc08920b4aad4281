"""The programs' optional gather step (`--aggregate usc`): one prompt lists the kept branches' answers and asks
which final answer is the most consistent (universal self-consistency). With `--packets on` (the default) the
branches are marked as packets, so a server with `--rksc-packets on` copies their KV instead of computing it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any

from sglang_rksc.programs import gsm8k

AGGREGATES = ("vote", "usc")
PACKET_MODES = ("on", "off", "both")


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
        choices=PACKET_MODES,
        default="on",
        help="mark the gathered solutions as packets (a server with --rksc-packets on reuses their KV); "
        "'off' computes the gather prompt in full; 'both' asks with packets, then again in full, and reports "
        "both answers (what reuse changes, on the same branches)",
    )


def gather_answer(state: Any, solutions: Sequence[str], *, max_tokens: int, packets: str) -> dict[str, Any]:
    """Run the gather step after `state` (the question) and return what a row keeps of it; with `packets`
    "both", the full computation's answer is kept too (asked second: a packet request leaves nothing in the
    tree, so the full one is computed as if it came alone)."""
    from sglang_rksc.lang.gather import gather

    first = _record(gather(state, solutions, max_tokens=max_tokens, reuse=packets != "off"))
    if packets == "both":
        first["full"] = _record(gather(state, solutions, max_tokens=max_tokens, reuse=False))
    return first


def _record(result: Any) -> dict[str, Any]:
    info = result.packets or {}
    meta = result.meta_info
    return {
        "text": result.text,
        "prediction": gsm8k.extract_answer(result.text),
        "prompt_tokens": int(meta.get("prompt_tokens", 0)),
        "cached_tokens": int(meta.get("cached_tokens", 0)),
        "completion_tokens": int(meta.get("completion_tokens", 0)),
        "tokens_not_computed": result.tokens_not_computed,
        "spans_reused": len(info.get("reused", [])),
        "spans_missed": int(info.get("missed", 0)),
        "seconds": result.seconds,
        "note": result.note,
    }


def score(gathered: Mapping[str, Any] | None, gold: Any) -> dict[str, Any]:
    """The row's fields for the gather step (none without it)."""
    if gathered is None:
        return {}
    return {
        "usc_prediction": gathered["prediction"],
        "usc_correct": gathered["prediction"] == gold,
        "usc": dict(gathered),
    }


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    gathered = [r["usc"] for r in rows if r.get("usc")]
    if not gathered:
        return {}
    out = {"usc_accuracy": sum(bool(r.get("usc_correct")) for r in rows) / len(gathered), **_totals(gathered, "gather")}
    full = [g["full"] for g in gathered if "full" in g]
    if full:
        golds = [r["gold"] for r in rows if r.get("usc")]
        out["usc_full_accuracy"] = sum(f["prediction"] == gold for f, gold in zip(full, golds, strict=True)) / len(full)
        out["usc_agreement_with_full"] = sum(g["prediction"] == g["full"]["prediction"] for g in gathered) / len(full)
        out.update(_totals(full, "gather_full"))
    return out


def _totals(records: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}_prompt_tokens": sum(g["prompt_tokens"] for g in records),
        f"{prefix}_prompt_tokens_computed": sum(
            g["prompt_tokens"] - g["cached_tokens"] - g["tokens_not_computed"] for g in records
        ),
        f"{prefix}_tokens_not_computed": sum(g["tokens_not_computed"] for g in records),
        f"{prefix}_spans_reused": sum(g["spans_reused"] for g in records),
        f"{prefix}_seconds": sum(g["seconds"] for g in records),
        f"{prefix}_completion_tokens": sum(g["completion_tokens"] for g in records),
    }
