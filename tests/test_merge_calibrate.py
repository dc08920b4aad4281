"""Offline replay of tree-of-thought merging over an unmerged run's rows (no server)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sglang_rksc.cache import span_vector
from sglang_rksc.tools import merge_calibrate


def _span(*values: float) -> dict:
    norm = math.sqrt(sum(v * v for v in values))
    return span_vector.encode(torch.tensor([v / norm for v in values]), tokens=4)


def _leaf(plan: str, plan_span: dict, solution: str, solution_span: dict, score: int) -> dict:
    return {
        "plan": plan,
        "solution": solution,
        "reflection": "",
        "score": score,
        "spans": {"plan": plan_span, "solution": solution_span},
    }


def _row() -> dict:
    """Two plans at similarity 0.8; under plan A two solutions at ~0.995, under plan B two unrelated ones.
    Unmerged: 18 gets 1 + 1 + 5 = 7 (plan A's two and B's first), 20 gets 4: the answer is 18."""
    a, b = _span(1, 0, 0, 0), _span(0.8, 0.6, 0, 0)
    s1, s2 = _span(0, 0, 1, 0), _span(0, 0, 1, 0.1)
    s3, s4 = _span(0, 0, 0, 1), _span(0, 1, 0, 0)
    leaves = [
        _leaf("A", a, "The answer is 18.", s1, 1),
        _leaf("A", a, "The answer is 18.", s2, 1),
        _leaf("B", b, "The answer is 18.", s3, 5),
        _leaf("B", b, "The answer is 20.", s4, 4),
    ]
    return {"index": 0, "gold": "20", "prediction": "18", "branch_weights": [1] * 4, "branches": leaves}


def test_replay_merges_plans_then_solutions_and_votes_with_group_sizes():
    row = _row()
    assert merge_calibrate.replay_problem(row, 0.999) == ("18", "18", 0)
    # Plan A's solutions merge (0.995): A keeps one leaf of weight 2; the vote does not change.
    assert merge_calibrate.replay_problem(row, 0.99) == ("18", "18", 1)
    # The plans merge too (0.8, float16 on the wire: 0.79): only plan A's subtree goes on, one leaf of weight 4.
    assert merge_calibrate.replay_problem(row, 0.79) == ("18", "18", 3)
    results = merge_calibrate.replay([row], [0.999, 0.99, 0.79])
    assert [r.merged for r in results] == [0, 1, 3] and all(r.agreement == 1.0 for r in results)
    assert all(r.accuracy == 0.0 for r in results)


def test_a_merge_that_changes_the_answer_is_counted_and_the_bound_chooses_above_it():
    row = _row()
    for leaf, (answer, score) in zip(row["branches"], [("18", 1), ("18", 1), ("20", 5), ("20", 4)], strict=True):
        leaf["solution"], leaf["score"] = f"The answer is {answer}.", score
    row["prediction"] = "20"  # unmerged: 20 gets 5 + 4, 18 gets 1 + 1
    results = merge_calibrate.replay([row], [0.999, 0.99, 0.79])
    # Plan A's agreeing solutions merge at 0.99 (18 keeps 2); the plans merge at 0.79 and only plan A's
    # subtree goes on: 18 with weight 4, the answer changes.
    assert [r.merged for r in results] == [0, 1, 3] and [r.agreement for r in results] == [1.0, 1.0, 0.0]
    assert merge_calibrate.replay_problem(row, 0.79)[0] == "18"
    assert merge_calibrate.choose(results, 0.9).threshold == 0.99
    assert merge_calibrate.choose(results[2:], 0.9) is None
    assert "| 0.79 | 3 of 4 (75%) | 0.00 |" in merge_calibrate.markdown(results)


def test_solutions_with_different_answers_are_not_merged_as_the_program_does_not():
    row = _row()
    for leaf, (answer, score) in zip(row["branches"], [("7", 3), ("20", 3), ("18", 5), ("20", 1)], strict=True):
        leaf["solution"], leaf["score"] = f"The answer is {answer}.", score
    # Plan A's two solutions are at ~0.995 but answer 7 and 20: apart at 0.99, so the vote stays 18 (5 > 4).
    assert merge_calibrate.replay_problem(row, 0.99) == ("18", "20", 0)


def test_replay_refuses_merged_runs_and_rows_without_vectors(tmp_path: Path):
    row = _row()
    row["branch_weights"] = [2, 1, 1]
    with pytest.raises(ValueError, match="unmerged run"):
        merge_calibrate.replay([row], [0.9])
    row = _row()
    row["branches"][0]["spans"]["plan"] = None
    with pytest.raises(ValueError, match="--rksc-span-embeddings on"):
        merge_calibrate.replay([row], [0.9])
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(_row()) + "\n")
    assert merge_calibrate.main([str(path), "--thresholds", "0.99,0.8", "--bound", "1"]) == 0
    with pytest.raises(SystemExit):
        merge_calibrate.main([str(path), "--thresholds", "2"])
