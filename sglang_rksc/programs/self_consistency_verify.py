"""Self-consistency with verification on GSM8K, as an ordinary SGLang program.

N solutions are sampled per question (`fork`), each is checked by a yes/no
verification step (`select`), and the answer is a vote weighted by the
verifier's probability of "yes". The unweighted majority vote is reported
beside it as the baseline.

    python -m sglang_rksc.programs.self_consistency_verify --num-problems 3 --samples 4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import sglang as sgl

from sglang_rksc.programs import aggregate, common, gsm8k, verification

NAME = "self_consistency_verify"
DESCRIPTION = "Self-consistency on GSM8K: N sampled solutions (fork), a yes/no verification each, weighted vote."

SOLVE_PROMPT = "Solve this math problem step by step. End with the line 'The answer is <number>.'\nProblem: {question}"
VERIFY_PROMPT = "Is the solution above correct? Answer yes or no."
VERDICTS = ["yes", "no"]


def yes_probability(meta: Mapping[str, Any] | None) -> float:
    """P(yes) among the verdicts: `verify`'s score, or from the logprobs that `select` reports."""
    if meta and meta.get("skipped"):
        return float(meta["score"])
    probs = verification.probabilities(meta, VERDICTS)
    if probs is None:
        raise ValueError(f"verification meta info without one probability per verdict: {meta!r}")
    return probs[0]


@sgl.function
def self_consistency_verify(
    s,
    question: str,
    samples: int,
    max_tokens: int,
    temperature: float,
    diversify: bool = False,
    verifier: verification.Verifier | str = "select",
    merge: float | None = None,
    gather: str = "vote",
    packets: str = "on",
):
    """Sample, verify, return one record per sample (and, with `gather` "usc", the gather step's answer);
    with `merge`, near-duplicate solutions with the same answer are verified once and their record carries
    the group's size as its weight."""
    s += sgl.user(SOLVE_PROMPT.format(question=question))
    forks = common.fork(s, samples)
    extra = verification.candidate_args(verifier)
    common.assistant_turns(
        forks, lambda: sgl.gen("solution", max_tokens=max_tokens, temperature=temperature, **extra), diversify
    )
    # Solutions are finished before they are merged: only those with the same answer are. A merge that
    # joined two answers would drop one from the vote (docs/answer-costs.md#merging-finished-solutions).
    groups = common.merge(forks, "solution", merge, same=gsm8k.extract_answer)
    kept = groups.representatives
    for f in kept:
        f += sgl.user(VERIFY_PROMPT)
        f += sgl.assistant(verification.step("verdict", VERDICTS, verifier, candidate="solution"))
    gathered = None
    if gather == "usc":
        gathered = aggregate.gather_answer(s, [f["solution"] for f in kept], max_tokens=max_tokens, packets=packets)
    samples = [
        {
            "solution": f["solution"],
            "verdict": f["verdict"],
            "p_yes": yes_probability(f.get_meta_info("verdict")),
            "weight": weight,
            "verification": verification.record(f["verdict"], f.get_meta_info("verdict")),
            "meta": [forks[i].get_meta_info("solution") for i in group],  # every member was generated
        }
        for f, weight, group in zip(kept, groups.sizes, groups.groups, strict=True)
    ]
    return {"samples": samples, "gather": gathered}


def score_problem(
    problem: gsm8k.Problem, samples: list[dict[str, Any]], gathered: dict[str, Any] | None = None
) -> dict[str, Any]:
    answers = [gsm8k.extract_answer(x["solution"]) for x in samples]
    p_yes = [x["p_yes"] for x in samples]
    weights = [x["weight"] for x in samples]  # samples a merged one stands for
    prediction = gsm8k.weighted_vote(answers, [p * w for p, w in zip(p_yes, weights, strict=True)])
    majority = gsm8k.weighted_vote(answers, [float(w) for w in weights])
    return {
        "index": problem.index,
        "question": problem.question,
        "gold": problem.answer,
        "prediction": prediction,
        "correct": prediction == problem.answer,
        "majority_prediction": majority,
        "majority_correct": majority == problem.answer,
        "sample_answers": answers,
        "verdicts": [x["verdict"] for x in samples],
        "sample_weights": weights,
        "merged_samples": sum(weights) - len(weights),
        "p_yes": p_yes,
        # Is each verdict right about its own sample? (yes for a correct answer, no otherwise)
        "verdicts_right": [
            (x["verdict"] == "yes") == (a == problem.answer) for x, a in zip(samples, answers, strict=True)
        ],
        "verifications": [x["verification"] for x in samples],
        **common.call_accounting(m for x in samples for m in x["meta"]),
        "solutions": [x["solution"] for x in samples],
        **aggregate.score(gathered, problem.answer),
    }


def add_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--samples", type=common.positive_int, default=4, help="solutions sampled per question")
    common.add_generation_arguments(
        group,
        max_tokens_help="tokens per solution; default: the served model's profile "
        "(SmolLM2 160, Qwen2.5-Coder-1.5B 384)",
        diversify_help="open each solution with its own phrase, so that greedy samples differ",
        temperature_default=0.7,
        temperature_help="sampling temperature of the solutions; 0 is greedy (all samples then agree)",
    )
    common.add_branch_arguments(group, verifier=True, merge_what="solutions with the same answer", aggregate_step=True)


def load_problems(start: int, count: int) -> list[gsm8k.Problem]:
    return gsm8k.load_problems(start, count)


run = common.ProgramRun(
    NAME,
    lambda: self_consistency_verify,  # looked up when it runs
    arguments=lambda p, o: {"question": p.question, "samples": o.samples},
    row=lambda p, v: score_problem(p, v["samples"], v["gather"]),
)


def describe_row(row: Mapping[str, Any]) -> str:
    mark = "correct" if row["correct"] else "wrong"
    majority, samples = common.for_people(row["majority_prediction"]), common.for_people(row["sample_answers"])
    return (
        f"problem {row['index']}: answer {common.for_people(row['prediction'])} (gold {row['gold']}, {mark}; "
        f"majority {majority}); samples {samples}; verdicts {common.for_people(row['verdicts'])}"
    )


def always_majority_accuracy(correct: Sequence[bool]) -> float:
    """The accuracy of the verdict that ignores the solution: "yes" to all or "no" to all, whichever is right
    more often (`correct`: is each judged solution right)."""
    return max(sum(correct), len(correct) - sum(correct)) / len(correct) if correct else 0.0


def summarize(rows: Sequence[Mapping[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
    n = len(rows) or 1
    verdicts = [v for r in rows for v in r["verdicts"]]
    right = [v for r in rows for v in r["verdicts_right"]]
    merged = {"merged_samples": sum(r["merged_samples"] for r in rows)} if options.merge_branches else {}
    return {
        "majority_vote_accuracy": sum(r["majority_correct"] for r in rows) / n,
        **merged,
        "verifications": len(verdicts),
        "verdict_yes_rate": verdicts.count("yes") / len(verdicts) if verdicts else 0.0,
        "verdict_accuracy": sum(right) / len(right) if right else 0.0,
        "always_majority_verdict_accuracy": always_majority_accuracy(
            [a == r["gold"] for r in rows for a in r["sample_answers"]]
        ),
        **verification.summarize(v for r in rows for v in r["verifications"]),
        **aggregate.summarize(rows),
    }


def main(argv: list[str] | None = None) -> int:
    return common.program_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
