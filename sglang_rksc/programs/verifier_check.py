"""How the verification step judges solutions whose correctness is known.

For each GSM8K problem the verifier of `self_consistency_verify` (same prompts, same
`--verifier`) judges three written solutions: the dataset's reference solution, a copy
whose final answer is wrong, and a copy with an arithmetic slip (the last result that
equals the answer replaced, and the final answer with it). Nothing is generated, so a
call costs one prefill: this is the cheap way to audit many CGEE verifications
(`--verifier audit`) on calls whose right verdict is known, "no" verdicts included.

The confidence gate judges a candidate by its own generation's confidence; these
candidates were not generated, so only the layer exit applies to them.

    python -m sglang_rksc.programs.verifier_check --num-problems 3 --verifier audit
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sglang as sgl

from sglang_rksc.programs import common, gsm8k, verification
from sglang_rksc.programs.self_consistency_verify import (
    SOLVE_PROMPT,
    VERDICTS,
    VERIFY_PROMPT,
    always_majority_accuracy,
    yes_probability,
)

NAME = "verifier_check"
DESCRIPTION = (
    "The verification step on GSM8K solutions of known correctness: the reference, a wrong final answer, "
    "an arithmetic slip"
)
KINDS = ("reference", "wrong_answer", "arithmetic_slip")

_ANNOTATION = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<16-3-4=9>>
_NUMBER = re.compile(gsm8k._NUMBER)


@dataclass(frozen=True)
class Candidate:
    kind: str  # one of KINDS
    text: str
    answer: str  # the final number the text states

    @property
    def correct(self) -> bool:
        return self.kind == "reference"


@dataclass(frozen=True)
class CheckProblem:
    index: int
    question: str
    answer: str  # gold, normalised
    candidates: tuple[Candidate, ...]  # in the order they are verified (shuffled per problem)


def wrong_number(gold: str, index: int) -> str:
    """A plausible wrong answer, fixed per problem: the gold moved by about a fifth (at least 1)."""
    value = float(gold)
    offset = max(1, round(abs(value) * 0.2))
    wrong = value + offset if index % 2 == 0 else value - offset
    out = gsm8k.normalize_number(repr(wrong))
    assert out is not None and out != gold
    return out


def _steps(answer_field: str) -> str:
    """The reference's reasoning without annotations or the '#### N' line."""
    body, _, _ = answer_field.rpartition("####")
    return _ANNOTATION.sub("", body).strip()


def _with_answer(steps: str, answer: str) -> str:
    return f"{steps}\nThe answer is {answer}."


def _slip(steps: str, gold: str, wrong: str) -> str | None:
    """`steps` with the last number equal to the gold answer replaced by `wrong`; None if none is."""
    spans = [m.span() for m in _NUMBER.finditer(steps) if gsm8k.normalize_number(m.group()) == gold]
    if not spans:
        return None
    start, end = spans[-1]
    written = steps[start:end]
    prefix = "$" if written.startswith("$") else ""
    # Written as the reference writes its numbers, so that only the value tells the slip.
    if "," in written and "." not in wrong:
        wrong = f"{int(wrong):,}"
    return f"{steps[:start]}{prefix}{wrong}{steps[end:]}"


def build_candidates(index: int, answer_field: str) -> tuple[Candidate, ...]:
    """The three solutions of one problem (two when the answer never appears in the steps), shuffled by
    the problem's index so that ties in the verdict do not favour the reference."""
    gold = gsm8k.gold_answer(answer_field)
    wrong = wrong_number(gold, index)
    steps = _steps(answer_field)
    candidates = [
        Candidate("reference", _with_answer(steps, gold), gold),
        Candidate("wrong_answer", _with_answer(steps, wrong), wrong),
    ]
    slipped = _slip(steps, gold, wrong)
    if slipped is not None:
        candidates.append(Candidate("arithmetic_slip", _with_answer(slipped, wrong), wrong))
    random.Random(index).shuffle(candidates)
    return tuple(candidates)


def load_problems(start: int, count: int) -> list[CheckProblem]:
    rows = gsm8k.load_rows(start, count)
    return [
        CheckProblem(index, row["question"], gsm8k.gold_answer(row["answer"]), build_candidates(index, row["answer"]))
        for index, row in rows
    ]


@sgl.function
def verifier_check(s, question: str, solutions: list[str], verifier: verification.Verifier | str = "select"):
    """Verify each written solution of one question; the question's prefix is shared by all of them."""
    s += sgl.user(SOLVE_PROMPT.format(question=question))
    forks = common.fork(s, len(solutions))
    for f, solution in zip(forks, solutions, strict=True):
        f += sgl.assistant(solution)
        f += sgl.user(VERIFY_PROMPT)
        f += sgl.assistant(verification.step("verdict", VERDICTS, verifier, candidate=None))
    return [
        {
            "verdict": f["verdict"],
            "p_yes": yes_probability(f.get_meta_info("verdict")),
            "verification": verification.record(f["verdict"], f.get_meta_info("verdict")),
            "meta": f.get_meta_info("verdict"),
        }
        for f in forks
    ]


def score_problem(problem: CheckProblem, judged: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The verifier's pick (the solution it gives the highest P(yes), first on ties) and each verdict's
    rightness: "yes" for the reference, "no" for a corrupted copy."""
    p_yes = [j["p_yes"] for j in judged]
    pick = max(range(len(p_yes)), key=p_yes.__getitem__)
    prediction = problem.candidates[pick].answer
    return {
        "index": problem.index,
        "question": problem.question,
        "gold": problem.answer,
        "prediction": prediction,
        "correct": prediction == problem.answer,
        "kinds": [c.kind for c in problem.candidates],
        "candidate_answers": [c.answer for c in problem.candidates],
        "verdicts": [j["verdict"] for j in judged],
        "p_yes": p_yes,
        "verdicts_right": [
            (j["verdict"] == "yes") == c.correct for j, c in zip(judged, problem.candidates, strict=True)
        ],
        "verifications": [j["verification"] for j in judged],
        **common.call_accounting(j["meta"] for j in judged),
    }


def add_arguments(group: argparse._ActionsContainer) -> None:
    common.add_branch_arguments(group, verifier=True)


# The verifier gets the served model's exit parameters (and gate, unused here), as self_consistency_verify's does.
run = common.ProgramRun(
    NAME,
    lambda: verifier_check,  # looked up when it runs
    arguments=lambda p, o: {"question": p.question, "solutions": [c.text for c in p.candidates]},
    row=lambda p, v: score_problem(p, v),
)


def describe_row(row: Mapping[str, Any]) -> str:
    judged = ", ".join(
        f"{kind} {common.for_people(answer)}: {verdict} ({common.for_people(p)})"
        for kind, answer, verdict, p in zip(
            row["kinds"], row["candidate_answers"], row["verdicts"], row["p_yes"], strict=True
        )
    )
    return f"problem {row['index']} (gold {row['gold']}): {judged}"


def full_depth_p_yes(record: Mapping[str, Any]) -> float | None:
    """P(yes) after the last layer, from an audited call's layer profile (None when not audited)."""
    profile = record.get("profile")
    return float(profile[-1][VERDICTS.index("yes")]) if profile else None


def ranking_accuracy(rows: Sequence[Mapping[str, Any]], p_yes: Sequence[Sequence[float | None]]) -> float | None:
    """Share of (reference, corrupted copy) pairs of a problem in which the reference gets the higher
    P(yes), ties counting half: what a vote weighted by P(yes) relies on. `p_yes` holds each row's values
    in its candidates' order; None if any is missing."""
    scores = []
    for row, values in zip(rows, p_yes, strict=True):
        if any(v is None for v in values):
            return None
        ref = values[row["kinds"].index("reference")]
        for kind, value in zip(row["kinds"], values, strict=True):
            if kind != "reference":
                scores.append(1.0 if ref > value else 0.5 if ref == value else 0.0)
    return sum(scores) / len(scores) if scores else None


def summarize(rows: Sequence[Mapping[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
    """Verdict accuracy per kind of solution, the yes rate, how often P(yes) ranks the reference above a
    corrupted copy (as returned, and at full depth where audited), and CGEE against full depth."""
    by_kind: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    verdicts = []
    for row in rows:
        for kind, right, verdict in zip(row["kinds"], row["verdicts_right"], row["verdicts"], strict=True):
            by_kind[kind].append(right)
            verdicts.append(verdict)
    out: dict[str, Any] = {
        "verifications": len(verdicts),
        "verdict_yes_rate": verdicts.count("yes") / len(verdicts) if verdicts else 0.0,
    }
    for kind, rights in by_kind.items():
        if rights:
            out[f"verdict_accuracy_{kind}"] = sum(rights) / len(rights)
    rights = [right for rows_of_kind in by_kind.values() for right in rows_of_kind]
    out["verdict_accuracy"] = sum(rights) / len(rights) if rights else 0.0
    kinds = [kind for row in rows for kind in row["kinds"]]
    out["always_majority_verdict_accuracy"] = always_majority_accuracy([kind == "reference" for kind in kinds])
    out["ranking_accuracy"] = ranking_accuracy(rows, [r["p_yes"] for r in rows])
    out["ranking_accuracy_full_depth"] = ranking_accuracy(
        rows, [[full_depth_p_yes(v) for v in r["verifications"]] for r in rows]
    )
    return {**out, **verification.summarize(v for r in rows for v in r["verifications"])}


def main(argv: list[str] | None = None) -> int:
    return common.program_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    raise SystemExit(main())
