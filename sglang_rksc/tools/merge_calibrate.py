"""Choose the merge threshold offline, from one tree-of-thought run that merged nothing.

On this CPU engine a greedy output depends on the batch it ran in, so two
runs whose programs send different requests (a merged run sends fewer) also
disagree on problems where nothing was merged: comparing a merged run with an
unmerged one measures the engine as much as the merge. Instead, this replays
the merge on the rows of one run with the server's span vectors
(`--rksc-span-embeddings on`, `--merge-branches 1.0`, which merges nothing):
for each threshold it groups the plans, then each kept plan's solutions, with
the frontend's own grouping (`sglang_rksc.lang.merge.group_by_similarity`; solutions
only with the same answer, as the program merges them),
keeps the representatives' leaves with their group sizes as weights, votes as
the program does, and compares the answer with the run's unmerged answer. That
assumes a representative's subtree is what the merged run would have
generated, which holds up to the batch effect above.

    python -m sglang_rksc.tools.merge_calibrate results/calib/merge_spans/bench.json --bound 0.9
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglang_rksc.cache import span_vector
from sglang_rksc.lang.merge import group_by_similarity
from sglang_rksc.programs import gsm8k

DESCRIPTION = "Replay tree-of-thought branch merging over an unmerged run's rows; print answers against thresholds."
THRESHOLDS = (0.99, 0.97, 0.95, 0.93, 0.9, 0.87, 0.85, 0.8, 0.75, 0.7)


@dataclass(frozen=True)
class MergeResult:
    threshold: float
    problems: int
    branches: int
    merged: int  # branches not continued
    agreement: float  # share of problems whose merged answer equals the unmerged one
    accuracy: float
    majority_accuracy: float


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a tree_of_thought run: program output (JSON lines) or a benchmark's bench.json."""
    text = path.read_text()
    if path.suffix == ".json":
        runs = json.loads(text)["runs"]
        return [row for run in runs for row in run["rows"]]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _vector(entry: Any) -> list[float] | None:
    return span_vector.decode(entry) if entry else None


def replay_problem(row: dict[str, Any], threshold: float) -> tuple[str | None, str | None, int]:
    """(score-weighted answer, majority answer, branches merged) of one problem merged at `threshold`."""
    branches = row["branches"]
    if any(w != 1 for w in row.get("branch_weights", [1])):
        raise ValueError(f"problem {row['index']} was merged already: replay needs an unmerged run")
    plans: dict[str, list[int]] = {}  # leaves by the plan they came from (same text, same vector)
    for i, leaf in enumerate(branches):
        plans.setdefault(json.dumps([leaf["plan"], leaf["spans"]["plan"]]), []).append(i)
    plan_leaves = list(plans.values())
    plan_vectors = [_vector(branches[leaves[0]]["spans"]["plan"]) for leaves in plan_leaves]
    leaf_answers = [gsm8k.extract_answer(leaf["solution"]) for leaf in branches]
    kept: list[tuple[int, int]] = []  # (leaf, weight)
    for group in group_by_similarity(plan_vectors, threshold)[0]:
        leaves = plan_leaves[group[0]]
        solution_vectors = [_vector(branches[i]["spans"]["solution"]) for i in leaves]
        # Solutions merge only with the same answer, as the program keys them.
        for sub in group_by_similarity(solution_vectors, threshold, [leaf_answers[i] for i in leaves])[0]:
            kept.append((leaves[sub[0]], len(group) * len(sub)))
    answers = [leaf_answers[i] for i, _ in kept]
    scored = gsm8k.weighted_vote(answers, [branches[i]["score"] * w for i, w in kept])
    majority = gsm8k.weighted_vote(answers, [float(w) for _, w in kept])
    return scored, majority, len(branches) - len(kept)


def replay(rows: Sequence[dict[str, Any]], thresholds: Sequence[float]) -> list[MergeResult]:
    if not rows:
        raise ValueError("no rows to replay")
    missing = sum(leaf["spans"]["plan"] is None for row in rows for leaf in row["branches"])
    if missing:
        raise ValueError(f"{missing} leaves have no span vector: run with --rksc-span-embeddings on")
    results = []
    for threshold in thresholds:
        merged = agree = correct = majority_correct = 0
        for row in rows:
            scored, majority, n = replay_problem(row, threshold)
            merged += n
            agree += scored == row["prediction"]
            correct += scored == row["gold"]
            majority_correct += majority == row["gold"]
        n_rows = len(rows)
        branches = sum(len(row["branches"]) for row in rows)
        results.append(
            MergeResult(
                threshold, n_rows, branches, merged, agree / n_rows, correct / n_rows, majority_correct / n_rows
            )
        )
    return results


def choose(results: Sequence[MergeResult], bound: float) -> MergeResult | None:
    """The lowest threshold (most merging) whose agreement with the unmerged answers is at least `bound`,
    among thresholds at and above which every threshold meets it."""
    chosen = None
    for result in sorted(results, key=lambda r: -r.threshold):
        if result.agreement < bound:
            break
        chosen = result
    return chosen


def markdown(results: Sequence[MergeResult]) -> str:
    lines = [
        "| threshold | branches merged | agreement with unmerged | accuracy | majority-vote accuracy |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        share = r.merged / r.branches if r.branches else 0.0
        lines.append(
            f"| {r.threshold:g} | {r.merged} of {r.branches} ({share:.0%}) | {r.agreement:.2f} | "
            f"{r.accuracy:.2f} | {r.majority_accuracy:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_rksc.tools.merge_calibrate", description=DESCRIPTION)
    parser.add_argument("path", type=Path, help="bench.json of an unmerged run, or a program's --output JSON lines")
    parser.add_argument(
        "--thresholds", default=",".join(map(str, THRESHOLDS)), help="comma-separated similarities to replay"
    )
    parser.add_argument(
        "--bound", type=float, default=0.9, help="least share of answers a merge may leave unchanged (0-1)"
    )
    args = parser.parse_args(argv)
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
        if not thresholds or not all(-1.0 <= t <= 1.0 for t in thresholds):
            raise ValueError("thresholds must be similarities in [-1, 1]")
        if not 0.0 <= args.bound <= 1.0:
            raise ValueError(f"--bound must be within [0, 1], got {args.bound}")
        results = replay(load_rows(args.path), thresholds)
    except (OSError, ValueError, KeyError) as exc:
        parser.error(str(exc))
    print(markdown(results))
    chosen = choose(results, args.bound)
    if chosen is None:
        print(f"no threshold keeps {args.bound:.0%} of the answers")
    else:
        print(f"lowest threshold keeping at least {args.bound:.0%} of the answers: {chosen.threshold:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
