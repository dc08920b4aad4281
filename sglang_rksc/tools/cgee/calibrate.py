"""Calibrate CGEE on audited verification calls, offline (no server).

A program run with `--verifier audit --output rows.jsonl` records, for every
verification that reached the server, the choice distribution after every layer
and the full-depth verdict, and for every call the candidate's confidence. This
replays the server's own exit rule (`sglang_rksc.exit.criterion`) over those
profiles for a grid of (min_layer, theta, eps, k), and the gate over the
confidences, and prints disagreement with the full-depth verdict against the
layers run and the skip rate. Choose the defaults on the calibration slice
(GSM8K 0-299) and report on problems from 300 on.

    python -m sglang_rksc.tools.cgee.calibrate results/cgee-calibration/scv-0-19.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglang_rksc.exit.criterion import RowExit
from sglang_rksc.exit.spec import ExitRule, ExitSpec
from sglang_rksc.lang.gate import Confidence, Gate

DESCRIPTION = "Replay CGEE's exit rule and gate over audited verification calls; print the trade-off."


def load_calls(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every verification record of every row, from JSON-lines files of program results."""
    calls = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                calls.extend(json.loads(line).get("verifications", []))
    return calls


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


@dataclass(frozen=True)
class ExitResult:
    min_layer: int
    theta: float
    eps: float
    k: int
    calls: int
    disagreements: int
    mean_layers: float


def replay_exit(profiles: Sequence[Sequence[Sequence[float]]], min_layer: int, theta: float, eps: float, k: int):
    """Exit layer and verdict index of each profile under one rule (full depth when it never fires)."""
    results = []
    for profile in profiles:
        row = RowExit(
            ExitSpec(
                choice_ids=tuple(range(len(profile[0]))), rule=ExitRule(theta=theta, eps=eps, k=k), min_layer=min_layer
            )
        )
        for layer, probs in enumerate(profile, start=1):
            ent = -sum(p * math.log(max(p, 1e-12)) for p in probs)
            if row.observe(layer, list(probs), ent):
                break
        if row.exit_layer is not None:
            results.append((row.exit_layer, _argmax(row.exit_probs)))
        else:
            results.append((len(profile), _argmax(profile[-1])))
    return results


def replay_outcome(
    profiles: Sequence[Sequence[Sequence[float]]], replayed: Sequence[tuple[int, int]]
) -> tuple[int, float]:
    """(verdicts differing from full depth, mean layers run) of one rule's `replay_exit` over `profiles`."""
    disagreements = sum(v != _argmax(p[-1]) for p, (_, v) in zip(profiles, replayed, strict=True))
    return disagreements, sum(layer for layer, _ in replayed) / len(replayed) if replayed else float("nan")


def sweep_exit(calls: Sequence[dict[str, Any]], grid: dict[str, Sequence[Any]]) -> list[ExitResult]:
    profiles = [c["profile"] for c in calls if c.get("profile")]
    out = []
    for min_layer, theta, eps, k in itertools.product(grid["min_layer"], grid["theta"], grid["eps"], grid["k"]):
        replayed = replay_exit(profiles, min_layer, theta, eps, k)
        out.append(ExitResult(min_layer, theta, eps, k, len(profiles), *replay_outcome(profiles, replayed)))
    return out


def gate_outcomes(calls: Sequence[dict[str, Any]], gate: Gate, accept: str) -> tuple[int, int, int]:
    """(calls with a confidence, calls the gate skips, skips whose full-depth verdict is not `accept`)."""
    judged = [c for c in calls if c.get("confidence") and c.get("full_verdict") is not None]
    skipped = [c for c in judged if gate.skips(Confidence(c["confidence"]["top"], c["confidence"]["margin"], 0))]
    return len(judged), len(skipped), sum(c["full_verdict"] != accept for c in skipped)


def majority_baseline(calls: Sequence[dict[str, Any]]) -> tuple[str | None, int, int]:
    """(the commonest full-depth verdict, audited calls, calls whose full-depth verdict differs from it):
    what answering that verdict every time, with no model call, would get wrong. CGEE must beat it."""
    full = [c["full_verdict"] for c in calls if c.get("full_verdict") is not None]
    if not full:
        return None, 0, 0
    majority = max(sorted(set(full)), key=full.count)
    return majority, len(full), sum(v != majority for v in full)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def add_rule_grid(parser: argparse.ArgumentParser, defaults: Mapping[str, Sequence[float]]) -> None:
    """The exit rule's flags, each a comma-separated list of values to try."""
    parser.add_argument("--min-layer", type=_ints, default=list(defaults["min_layer"]), help="first layers checked")
    parser.add_argument("--theta", type=_floats, default=list(defaults["theta"]), help="entropy bounds (nats)")
    parser.add_argument("--eps", type=_floats, default=list(defaults["eps"]), help="stability bounds (nats)")
    parser.add_argument("--k", type=_ints, default=list(defaults["k"]), help="layers the verdict must stay settled")


def first_missing(paths: Sequence[Path]) -> Path | None:
    """The first path that is not a file, for a one-line error."""
    return next((p for p in paths if not p.is_file()), None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.tools.cgee.calibrate",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("rows", nargs="+", type=Path, help="JSON-lines results of programs run with --verifier audit")
    add_rule_grid(
        parser,
        {
            "min_layer": [10, 15, 18, 20, 22, 24, 26, 28],
            "theta": [0.01, 0.05, 0.1, 0.3],
            "eps": [0.01, 0.05, 0.2],
            "k": [1, 2, 3],
        },
    )
    parser.add_argument("--accept", default="yes", help="the choice a skipped verification returns")
    parser.add_argument("--top", type=int, default=15, help="rows of the exit table to print")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    if (missing := first_missing(args.rows)) is not None:
        print(f"error: no such file: {missing}", file=sys.stderr)
        return 2
    calls = load_calls(args.rows)
    grid = {"min_layer": args.min_layer, "theta": args.theta, "eps": args.eps, "k": args.k}
    results = sweep_exit(calls, grid)
    if not results or not results[0].calls:
        print("error: no audited calls with layer profiles (run the program with --verifier audit)", file=sys.stderr)
        return 2
    full = [c["full_verdict"] for c in calls if c.get("full_verdict") is not None]
    print(f"{len(calls)} verification calls, {results[0].calls} with layer profiles")
    print("full-depth verdicts: " + ", ".join(f"{v!r} {full.count(v)}" for v in sorted(set(full))))
    majority, audited, against = majority_baseline(calls)
    print(f"always {majority!r} (no model call): {against} of {audited} against the full-depth verdict")
    served = [c for c in calls if c.get("full_verdict") is not None]
    print(
        f"the run's own CGEE verdicts: {sum(c['verdict'] != c['full_verdict'] for c in served)} of {len(served)} "
        "against the full-depth verdict"
    )
    print("\nexit rule (fewest disagreements, then fewest layers):")
    print("min_layer theta  eps    k  disagreements  mean layers run")
    for r in sorted(results, key=lambda r: (r.disagreements, r.mean_layers))[: args.top]:
        print(
            f"{r.min_layer:9d} {r.theta:<6g} {r.eps:<6g} {r.k:<2d} "
            f"{r.disagreements:5d} of {r.calls:<5d} {r.mean_layers:8.2f}"
        )
    print("\ngate (a skip returns " + repr(args.accept) + "):")
    for gate in (Gate(), Gate(top=0.8, margin=0.3, alt_top=0.8, rel_margin=0.4), Gate(0.9, 0.5, 0.9, 0.6)):
        judged, skipped, wrong = gate_outcomes(calls, gate, args.accept)
        print(f"  {gate}: {skipped} of {judged} skipped, {wrong} of them against the full-depth verdict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
