"""Does a verification's P(yes) still rank right solutions above wrong ones when CGEE exits early?

Reads audited `verifier_check` rows (`--verifier audit --output rows.jsonl`: each call's choice
distribution after every layer) and prints, offline, how often the reference solution gets a
higher P(yes) than a corrupted copy of it, with P(yes) read after each layer and at the exit layer
of each exit rule, beside the rule's verdict disagreement with full depth. A vote weighted by
P(yes) (`self_consistency_verify`) uses that value, not only the verdict.

    python -m sglang_rksc.tools.cgee.verdict_ranking results/vcheck/qwen-300-633.jsonl --min-layer 10,18,25
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sglang_rksc.programs.verifier_check import VERDICTS, ranking_accuracy
from sglang_rksc.tools.cgee.calibrate import add_rule_grid, first_missing, replay_exit, replay_outcome

DESCRIPTION = "P(yes) ranking of right over wrong solutions, per layer and at CGEE's exit (verifier_check rows)."
YES = VERDICTS.index("yes")


def load_rows(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Rows whose every verification carries a layer profile (audited)."""
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                calls = row.get("verifications") or []
                if calls and len(calls) == len(row.get("kinds", ())) and all(v.get("profile") for v in calls):
                    rows.append(row)
    return rows


def ranking_at_layer(rows: Sequence[Mapping[str, Any]], layer: int) -> float | None:
    """Ranking accuracy with P(yes) read after `layer` (1-based) on every call."""
    return ranking_accuracy(rows, [[v["profile"][layer - 1][YES] for v in r["verifications"]] for r in rows])


def ranking_at_exit(
    rows: Sequence[Mapping[str, Any]], min_layer: int, theta: float, eps: float, k: int
) -> tuple[float | None, int, float]:
    """(ranking accuracy with P(yes) at each call's exit layer, verdicts differing from full depth,
    mean layers run) under one exit rule, replayed as the server runs it."""
    profiles = [v["profile"] for r in rows for v in r["verifications"]]
    replayed = replay_exit(profiles, min_layer, theta, eps, k)
    at_exit = iter([p[layer - 1][YES] for p, (layer, _) in zip(profiles, replayed, strict=True)])
    per_row = [[next(at_exit) for _ in r["verifications"]] for r in rows]
    return ranking_accuracy(rows, per_row), *replay_outcome(profiles, replayed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.tools.cgee.verdict_ranking",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("rows", nargs="+", type=Path, help="JSON-lines of verifier_check run with --verifier audit")
    add_rule_grid(parser, {"min_layer": [10, 18, 25], "theta": [0.1], "eps": [0.05], "k": [1]})
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    if (missing := first_missing(args.rows)) is not None:
        print(f"error: no such file: {missing}", file=sys.stderr)
        return 2
    rows = load_rows(args.rows)
    if not rows:
        print("error: no audited verifier_check rows (run it with --verifier audit --output)", file=sys.stderr)
        return 2
    depth = len(rows[0]["verifications"][0]["profile"])
    calls = sum(len(r["verifications"]) for r in rows)
    print(f"{len(rows)} problems, {calls} audited calls, {depth} layers")
    print("\nP(yes) read after layer:  layer  ranking accuracy (reference above a corrupted copy)")
    for layer in sorted({*range(2, depth + 1, 2), depth}):
        print(f"{layer:28d}  {ranking_at_layer(rows, layer):.3f}")
    print("\nexit rule (min_layer theta eps k): ranking at the exit layer, verdicts against full depth, mean layers")
    for min_layer, theta, eps, k in itertools.product(args.min_layer, args.theta, args.eps, args.k):
        ranked, disagreements, mean = ranking_at_exit(rows, min_layer, theta, eps, k)
        print(f"  {min_layer:3d} {theta:<5g} {eps:<5g} {k}: {ranked:.3f}, {disagreements} of {calls}, {mean:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
