"""What a mechanism costs in answers: changes against radix beyond radix's own drift, with intervals."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglang_rksc.bench import answer_costs
from sglang_rksc.bench.journal import Journal
from sglang_rksc.tools.intervals import paired_bootstrap, wilson


def test_wilson_and_the_paired_bootstrap():
    low, high = wilson(0, 100)
    assert low == 0.0 and high == pytest.approx(0.037, abs=1e-3)  # zero of 100 still allows up to 3.7%
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.404, abs=1e-3) and high == pytest.approx(0.596, abs=1e-3)
    diff, low, high = paired_bootstrap([1, 0, 0, 0] * 25, [0, 0, 0, 0] * 25)
    assert diff == 0.25 and low < 0.25 < high and low > 0.1
    assert paired_bootstrap([1, 0] * 10, [1, 0] * 10) == (0.0, 0.0, 0.0)  # paired: identical changes cancel
    with pytest.raises(ValueError):
        paired_bootstrap([1], [1, 0])


GOLD = {300: "1", 301: "2", 302: "1", 303: "9"}  # radix answers the first two right


def _row(index: int, prediction: str, gold: str = "1", **extra) -> dict:
    return {"index": index, "prediction": prediction, "correct": prediction == gold, **extra}


def test_costs_from_a_journal_still_filling_in(tmp_path: Path, capsys):
    answers = {
        "radix": ["1", "2", "3", "4"],
        "radix-rerun": ["1", "2", "3", "9"],  # drift: one of four
        "rksc-merge": ["1", "7", "8", "9"],  # three of four changed
        "rksc-packets": ["1", "2", "3"],  # the fourth problem not run yet
    }
    config = {"program": "tree_of_thought", "modes": [(mode, [], []) for mode in answers]}
    journal = Journal(tmp_path / "journal.jsonl", config, resume=False)
    for mode, predictions in answers.items():
        segment = journal.segment(f"{mode}#0")
        for i, p in enumerate(predictions):
            usc = {"prediction": p, "full": {"prediction": p if i else "0"}} if mode == "rksc-packets" else None
            text = [f"work {p}"] if mode != "radix-rerun" or i else ["other rounding, same answer"]
            merges = int(mode == "rksc-merge" and i == 1)  # merge's texts differ on 301-303, merged only on 301
            row = _row(300 + i, p, GOLD[300 + i], usc=usc, solutions=text, merged_samples=merges)
            segment.row(300 + i, row, 1.0, {})
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"kind": "row", "key": "rksc-merge#0", "ind')  # a line a kill cut short is not read
    config, totals = answer_costs.load_totals(tmp_path)
    program, rows = config["program"], answer_costs.rows_of(totals)
    costs = {c.mode: c for c in answer_costs.costs(program, rows)}
    merge, packets = costs["rksc-merge"], costs["rksc-packets"]
    assert (merge.problems, merge.changed, merge.drift) == (4, 3, 1) and merge.beyond[0] == pytest.approx(0.5)
    assert (packets.problems, packets.changed, packets.drift) == (3, 0, 0)
    assert merge.accuracy == 0.5 and merge.reference_accuracy == 0.5
    # merge lost one of radix's two right answers (301) and made one wrong one right (303), as did the rerun
    assert (merge.solved, merge.lost, merge.gained, merge.drift_lost, merge.drift_gained) == (2, 1, 1, 0, 1)
    assert answer_costs.packets_within_run(rows["rksc-packets"]) == (1, 3)
    assert answer_costs.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| tree_of_thought | rksc-merge | 4 | 3 of 4" in out and "packets against the same gather" in out
    assert "| 1 of 2 (50.0%, 9.5-90.5); 1 of 2; rerun 0 and 1 | 1 of 4 (2); 2 without a merge |" in out
    # Texts: merge generated radix's only on 300; the rerun on 301 and 302 (300 its rounding, 303 its answer).
    assert (merge.same_texts, merge.drift_same_texts, packets.same_texts) == (1, 2, 3)
    assert (merge.unmerged_differ, packets.unmerged_differ) == (2, 0)
    tot_row = {"branches": [{"plan": "p", "solution": "s", "reflection": "r", "score": 3}]}
    assert answer_costs.texts(tot_row) == [["p", "s", "r"]] and answer_costs.texts({}) == []


def test_audited_verdicts_are_counted_with_their_skips():
    def call(verdict, full, skipped):
        return {"verdict": verdict, "full_verdict": full, "skipped": skipped}

    rows = {
        1: {"verifications": [call("yes", "yes", True), call("yes", "no", True), call("no", "no", False)]},
        2: {"verifications": [call("no", "yes", False), {"verdict": "yes", "full_verdict": None, "skipped": False}]},
    }
    assert answer_costs.verdicts_within_run(rows) == (4, 2, 2, 1)


def test_what_each_mechanism_did_is_read_from_the_mode_flags_rows_and_counters():
    asks = answer_costs.decisions(
        "tree_of_thought",
        ["--rksc-semantic", "on"],
        [],
        {1: {}, 2: {}},
        {"forks_alias": 3.0, "forks_probe": 1.0, "followups_hit": 2.0},
    )
    assert (
        asks == "ASKS forks 4 (1 by the probe), follow-ups from a donor 2 (2 problems)"
    )  # an ASKS mode that never forked says 0
    assert answer_costs.decisions("tree_of_thought", ["--rksc-semantic", "on"], [], {1: {}}, {}).startswith(
        "ASKS forks 0 (0 by the probe),"
    )
    rows = {
        1: {"merged_branches": 1, "branch_answers": ["1", "2", "3"], "verifications": [{"skipped": True}]},
        2: {"merged_branches": 0, "branch_answers": ["1", "2", "3", "4"], "verifications": [{"skipped": False}] * 3},
    }
    full = answer_costs.decisions("tree_of_thought", [], ["--verifier", "cgee", "--merge-branches", "auto"], rows, {})
    assert full == "merged 1 of 8 branches; gate skipped 1 of 4 verifications (2 problems)"
    samples = {1: {"merged_samples": 2, "sample_answers": ["1", "2"], "usc": {"prediction": "1"}}}
    both = answer_costs.decisions(
        "self_consistency_verify",
        [],
        ["--merge-branches", "0.9", "--aggregate", "usc", "--packets", "both"],
        samples,
        {},
    )
    assert both == "merged 2 of 4 branches; gather prompts with packets 1 (1 problem)"
    # In self-consistency auto merges nothing, so merging is not among what a mode at auto decided.
    auto = ["--verifier", "cgee", "--merge-branches", "auto"]
    assert answer_costs.decisions("self_consistency_verify", [], auto, samples, {}) == (
        "gate skipped 0 of 0 verifications (1 problem)"
    )
    # The reference modes turn nothing approximate on: nothing to say.
    assert answer_costs.decisions("tree_of_thought", ["--radix-cache-backend", "default"], [], rows, {}) == ""
    assert answer_costs.decisions("tree_of_thought", [], ["--verifier", "select"], rows, {}) == ""


def test_a_mode_is_judged_on_problems_the_rerun_left_out_with_no_drift_counted_there(tmp_path: Path, capsys):
    answers = {
        "radix": ["1", "2", "3", "4", "5"],
        "radix-rerun": ["1", "7"],  # ran on the first two only, and drifted on 301
        "rksc-full": ["1", "2", "3", "8", "5"],  # changed 303, where the rerun did not run
    }
    config = {"program": "self_consistency_verify", "modes": [(mode, [], []) for mode in answers]}
    journal = Journal(tmp_path / "journal.jsonl", config, resume=False)
    for mode, predictions in answers.items():
        segment = journal.segment(f"{mode}#0")
        for i, p in enumerate(predictions):
            segment.row(300 + i, _row(300 + i, p, solutions=[f"work {p}"]), 1.0, {})
    config, totals = answer_costs.load_totals(tmp_path)
    (full,) = answer_costs.costs(config["program"], answer_costs.rows_of(totals))
    assert (full.problems, full.rerun_problems, full.changed, full.drift) == (5, 2, 1, 1)
    assert full.beyond[0] == pytest.approx(0.0)  # 1 of 5 changed, against 1 drift counted over the same 5
    assert (full.same_texts, full.drift_same_texts) == (4, 1)
    assert answer_costs.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 1 of 2 (50.0%, 9.5-90.5), rerun on 2 (none counted on the rest) |" in out
    assert "| 4 of 5 (1 of 2); 1 without a merge |" in out
