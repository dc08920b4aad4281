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
