"""The verifier check's solutions of known correctness, built from GSM8K's reference solutions."""

from __future__ import annotations

import re
from argparse import Namespace

from sglang_rksc.programs import gsm8k, verifier_check
from sglang_rksc.programs.verifier_check import Candidate, CheckProblem


def _by_kind(problem: CheckProblem) -> dict[str, Candidate]:
    return {c.kind: c for c in problem.candidates}


def test_reference_is_the_dataset_solution_without_annotations_ending_as_the_program_asks():
    (problem,) = verifier_check.load_problems(0, 1)
    ref = _by_kind(problem)["reference"]
    assert ref.answer == problem.answer == "18"
    assert "<<" not in ref.text and "####" not in ref.text
    assert ref.text.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")
    assert ref.text.endswith("\nThe answer is 18.") and gsm8k.extract_answer(ref.text) == "18"


def test_corrupted_copies_state_one_wrong_answer_and_differ_where_they_should():
    for problem in verifier_check.load_problems(0, 60):
        kinds = _by_kind(problem)
        ref, wrong = kinds["reference"], kinds["wrong_answer"]
        assert wrong.answer != problem.answer and gsm8k.extract_answer(wrong.text) == wrong.answer
        # The wrong final answer: the same steps, only the last line changed.
        assert wrong.text.rsplit("\n", 1)[0] == ref.text.rsplit("\n", 1)[0]
        slip = kinds.get("arithmetic_slip")
        if slip is None:
            continue
        assert slip.answer == wrong.answer and gsm8k.extract_answer(slip.text) == wrong.answer
        # The slip: exactly one number of the steps changed, from the gold answer to the wrong one.
        ref_numbers = re.findall(gsm8k._NUMBER, ref.text.rsplit("\n", 1)[0])
        slip_numbers = re.findall(gsm8k._NUMBER, slip.text.rsplit("\n", 1)[0])
        changed = [(a, b) for a, b in zip(ref_numbers, slip_numbers, strict=True) if a != b]
        assert len(changed) == 1
        before, after = changed[0]
        assert gsm8k.normalize_number(before) == problem.answer
        assert gsm8k.normalize_number(after) == wrong.answer


def test_answer_missing_from_the_steps_gives_no_slip_and_the_order_is_fixed_per_problem():
    field = "Half of 10 is five.\n#### 5"
    candidates = verifier_check.build_candidates(7, field)
    assert sorted(c.kind for c in candidates) == ["reference", "wrong_answer"]
    assert candidates == verifier_check.build_candidates(7, field)
    # Shuffled per problem: the reference is not always verified first (ties in P(yes) go to the first).
    firsts = {p.candidates[0].kind for p in verifier_check.load_problems(0, 30)}
    assert firsts == set(verifier_check.KINDS)


def test_wrong_numbers_differ_from_the_gold_for_small_large_and_fractional_answers():
    for gold in ("0", "1", "3", "18", "70000", "0.5", "-4"):
        for index in (0, 1):
            wrong = verifier_check.wrong_number(gold, index)
            assert wrong != gold and gsm8k.normalize_number(wrong) == wrong


def _record(verdict: str, full: str | None) -> dict:
    return {
        "verdict": verdict,
        "skipped": False,
        "layers_run": 28,
        "num_layers": 28,
        "exit_layer": 12,
        "full_verdict": full,
        "confidence": None,
        "server_seconds": None,
        "profile": None,
    }


def test_scoring_picks_the_most_trusted_solution_and_summarizes_per_kind():
    problem = CheckProblem(
        1,
        "q",
        "3",
        (Candidate("wrong_answer", "a", "2"), Candidate("reference", "b", "3"), Candidate("arithmetic_slip", "c", "2")),
    )
    judged = [
        {"verdict": "yes", "p_yes": 0.9, "verification": _record("yes", "yes"), "meta": None},
        {"verdict": "yes", "p_yes": 0.7, "verification": _record("yes", "yes"), "meta": None},
        {"verdict": "no", "p_yes": 0.2, "verification": _record("no", "yes"), "meta": None},
    ]
    row = verifier_check.score_problem(problem, judged)
    assert row["prediction"] == "2" and not row["correct"]
    assert row["verdicts_right"] == [False, True, True]
    summary = verifier_check.summarize([row], Namespace())
    assert summary["verifications"] == 3 and abs(summary["verdict_yes_rate"] - 2 / 3) < 1e-9
    assert summary["verdict_accuracy_reference"] == 1.0
    assert summary["verdict_accuracy_wrong_answer"] == 0.0
    assert summary["verdict_accuracy_arithmetic_slip"] == 1.0
    assert summary["verify_audited"] == 3 and summary["verify_disagreements"] == 1
    # As returned, P(yes) ranks the reference (0.7) below one copy (0.9) and above the other (0.2);
    # the records carry no layer profile, so there is no full-depth ranking.
    assert summary["ranking_accuracy"] == 0.5 and summary["ranking_accuracy_full_depth"] is None


def test_full_depth_ranking_reads_the_last_layer_of_each_audited_profile():
    rows = []
    for ref_last, copy_last in ((0.9, 0.8), (0.7, 0.7)):
        records = [_record("yes", "yes") for _ in range(2)]
        records[0]["profile"] = [[0.99, 0.01], [ref_last, 1 - ref_last]]
        records[1]["profile"] = [[0.99, 0.01], [copy_last, 1 - copy_last]]
        rows.append({"kinds": ["reference", "wrong_answer"], "p_yes": [0.99, 0.99], "verifications": records})
    assert verifier_check.full_depth_p_yes(rows[0]["verifications"][0]) == 0.9
    # Exit-layer values tie everywhere (0.5); at full depth one pair is ranked right and one ties.
    assert verifier_check.ranking_accuracy(rows, [r["p_yes"] for r in rows]) == 0.5
    full = verifier_check.ranking_accuracy(
        rows, [[verifier_check.full_depth_p_yes(v) for v in r["verifications"]] for r in rows]
    )
    assert full == 0.75


def test_ranking_per_layer_and_at_the_exit_layer_of_each_rule(tmp_path):
    import json

    from sglang_rksc.tools.cgee import verdict_ranking

    settled = [[0.5, 0.5]] * 2 + [[0.999, 0.001]] * 6  # confident "yes" from layer 3: the exit fires there
    ref = [*settled[:-1], [0.9, 0.1]]  # full depth: the reference is trusted more than its copy
    copy = [*settled[:-1], [0.7, 0.3]]
    records = [{**_record("yes", "yes"), "profile": p} for p in (copy, ref)]
    row = {"kinds": ["wrong_answer", "reference"], "p_yes": [0.999, 0.999], "verifications": records}
    path = tmp_path / "rows.jsonl"
    unaudited = {"kinds": ["reference"], "p_yes": [0.9], "verifications": [_record("yes", None)]}
    path.write_text(json.dumps(row) + "\n" + json.dumps(unaudited) + "\n")
    rows = verdict_ranking.load_rows([path])
    assert rows == [row]  # a row without layer profiles is left out
    assert verdict_ranking.ranking_at_layer(rows, 4) == 0.5 and verdict_ranking.ranking_at_layer(rows, 8) == 1.0
    # Exiting from layer 2 fires at layer 4 (low entropy from 3, stable by 4), where both read 0.999:
    # the verdict agrees with full depth, the ranking is lost.
    assert verdict_ranking.ranking_at_exit(rows, 2, 0.1, 0.05, 1) == (0.5, 0, 4.0)
    # A first layer past the settled ones runs to full depth and keeps it.
    assert verdict_ranking.ranking_at_exit(rows, 8, 0.1, 0.05, 1)[:2] == (1.0, 0)
    assert verdict_ranking.main([str(path), "--min-layer", "2,8"]) == 0
