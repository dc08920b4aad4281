"""Tree-of-thought on GSM8K, as an ordinary SGLang program.

Each question is planned, the plan is expanded into branches with `fork`,
every branch executes its plan and reflects on its solution, and the final
answer is chosen by a vote weighted by the reflections' scores.

    python -m sglang_rksc.programs.tree_of_thought --num-problems 3
    python -m sglang_rksc.programs.tree_of_thought --url http://127.0.0.1:30000 --branches 3 --depth 3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import sglang as sgl

from sglang_rksc.cache import span_vector
from sglang_rksc.programs import aggregate, common, gsm8k, verification

NAME = "tree_of_thought"
DESCRIPTION = "Tree-of-thought on GSM8K with fork: plan, branch, execute, reflect, score-weighted vote."

PLAN_PROMPT = (
    "Make a short plan for solving this math problem. Say which quantities you will compute and in which "
    "order, without doing the arithmetic yet.\nProblem: {question}"
)
EXECUTE_PROMPT = (
    "Now follow the plan: compute step by step with the real numbers. End with the line 'The answer is <number>.'"
)
REFLECT_PROMPT = "Check the solution above carefully. Is every step right? Point out any mistake."
SCORE_PROMPT = "Rate the solution from 1 (wrong) to 5 (certainly right). Reply with the number only."
SCORES = ["1", "2", "3", "4", "5"]
ACCEPT_SCORE = 4  # a branch scored below this counts as rejected


def _fan_out(depth: int, level: int, branches: int) -> int:
    """Levels 1..depth fork `branches` ways; deeper levels continue a single line."""
    return branches if level <= depth else 1


@sgl.function
def tree_of_thought(
    s,
    question: str,
    branches: int,
    depth: int,
    max_tokens: int,
    temperature: float,
    diversify: bool = False,
    verifier: verification.Verifier | str = "select",
    mark: bool = False,
    merge: float | None = None,
    gather: str = "vote",
    packets: str = "on",
):
    """Plan (level 1) -> execute (level 2) -> reflect and score (level 3); returns the leaves (and, with
    `gather` "usc", the answer of one prompt comparing the kept solutions).

    With `merge`, near-duplicate plans, and near-duplicate solutions of one plan, are merged:
    one branch per group goes on, and its leaves carry the group's size as their weight."""
    s += sgl.user(PLAN_PROMPT.format(question=question))
    plans = common.fork(s, _fan_out(depth, 1, branches))
    common.assistant_turns(plans, lambda: sgl.gen("plan", max_tokens=max_tokens, temperature=temperature), diversify)
    plan_groups = common.merge(plans, "plan", merge)

    expanded = []
    for plan, weight, members in zip(plan_groups.representatives, plan_groups.sizes, plan_groups.groups, strict=True):
        plan_members = [plans[i] for i in members]
        plan += sgl.user(EXECUTE_PROMPT)
        forks = common.fork(plan, _fan_out(depth, 2, branches))
        common.assistant_turns(
            forks, lambda: sgl.gen("solution", max_tokens=max_tokens, temperature=temperature), diversify
        )
        expanded.append((plan, weight, plan_members, forks))
    solutions = []
    for plan, weight, plan_members, forks in expanded:  # all plans' solutions are in flight before any merge waits
        # Finished solutions merge only where their answers agree (plans, unfinished, cannot be told apart so).
        groups = common.merge(forks, "solution", merge, same=gsm8k.extract_answer)
        for f, n, members in zip(groups.representatives, groups.sizes, groups.groups, strict=True):
            solutions.append((plan, f, weight * n, (plan_members, [forks[i] for i in members])))

    leaves = []
    for plan, solution, weight, members in solutions:
        solution += sgl.user(REFLECT_PROMPT)
        forks = common.fork(solution, _fan_out(depth, 3, branches))
        reflect = sgl.gen(
            "reflection",
            max_tokens=max(1, max_tokens // 2),
            temperature=temperature,
            **verification.candidate_args(verifier),
        )
        forks += sgl.assistant(reflect)
        forks += sgl.user(SCORE_PROMPT)
        # The score is the verification; a gated skip accepts the branch with the top score.
        forks += sgl.assistant(
            verification.step("score", SCORES, verifier, candidate="reflection", accept=ACCEPT_SCORE)
        )
        leaves.extend((plan, solution, f, weight, members) for f in forks)

    gathered = None
    if gather == "usc":  # before the marks: the solutions' KV is what the gather prompt reuses
        kept = [solution["solution"] for _, solution, _, _ in solutions]
        gathered = aggregate.gather_answer(s, kept, max_tokens=max_tokens, packets=packets)

    for _, _, leaf, _, _ in leaves:
        common.sync(leaf)  # a request the server failed is named here, not later as a missing score
    # RSBCM: low-scored leaves are dead first; then the whole tree is done.
    common.mark_branches([f for _, _, f, _, _ in leaves if int(f["score"]) < ACCEPT_SCORE], "rejected", mark)
    common.mark_branches(plans, "finished", mark)

    rows = [
        {
            "plan": plan["plan"],
            "solution": solution["solution"],
            "reflection": reflection["reflection"],
            "score": int(reflection["score"]),
            "weight": weight,
            # The server's span vectors (with --rksc-span-embeddings on): merging can be replayed offline.
            "spans": {
                "plan": span_vector.entry(plan.get_meta_info("plan")),
                "solution": span_vector.entry(solution.get_meta_info("solution")),
            },
            "verification": verification.record(reflection["score"], reflection.get_meta_info("score")),
            "meta": [  # every merged member was generated too
                *(p.get_meta_info("plan") for p in members[0]),
                *(f.get_meta_info("solution") for f in members[1]),
                reflection.get_meta_info("reflection"),
            ],
        }
        for plan, solution, reflection, weight, members in leaves
    ]
    return {"leaves": rows, "gather": gathered}


def score_problem(
    problem: gsm8k.Problem, leaves: list[dict[str, Any]], gathered: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Vote over the leaves' answers, each weighted by its reflection score."""
    answers = [gsm8k.extract_answer(leaf["solution"]) for leaf in leaves]
    weights = [leaf["weight"] for leaf in leaves]  # branches a merged leaf stands for
    prediction = gsm8k.weighted_vote(answers, [leaf["score"] * w for leaf, w in zip(leaves, weights, strict=True)])
    majority = gsm8k.weighted_vote(answers, [float(w) for w in weights])
    return {
        "index": problem.index,
        "question": problem.question,
        "gold": problem.answer,
        "prediction": prediction,
        "correct": prediction == problem.answer,
        "majority_prediction": majority,
        "majority_correct": majority == problem.answer,
        "branch_answers": answers,
        "branch_scores": [leaf["score"] for leaf in leaves],
        "branch_weights": weights,
        "merged_branches": sum(weights) - len(weights),
        "verifications": [leaf["verification"] for leaf in leaves],
        **common.call_accounting(m for leaf in leaves for m in leaf["meta"]),
        "branches": [{k: leaf[k] for k in ("plan", "solution", "reflection", "score", "spans")} for leaf in leaves],
        **aggregate.score(gathered, problem.answer),
    }


def add_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--branches", type=common.positive_int, default=2, help="how many ways each forking level branches"
    )
    group.add_argument(
        "--depth",
        type=int,
        choices=[1, 2, 3],
        default=2,
        help="how many levels fork: 1 plan, 2 plan and execution, 3 also reflection",
    )
    common.add_generation_arguments(
        group,
        max_tokens_help="tokens per plan or solution (reflections get half); default: the served model's profile "
        "(SmolLM2 128, Qwen2.5-Coder-1.5B 384)",
        diversify_help="open each branch's turn with its own phrase, so that greedy branches differ",
        temperature_default=0.7,
        temperature_help="sampling temperature; 0 is greedy (all branches then agree)",
    )
    common.add_branch_arguments(
        group,
        verifier=True,
        mark=True,
        merge_what="plans, and solutions of one plan with the same answer,",
        aggregate_step=True,
    )


def load_problems(start: int, count: int) -> list[gsm8k.Problem]:
    return gsm8k.load_problems(start, count)


run = common.ProgramRun(
    NAME,
    lambda: tree_of_thought,  # looked up when it runs
    arguments=lambda p, o: {"question": p.question, "branches": o.branches, "depth": o.depth},
    row=lambda p, v: score_problem(p, v["leaves"], v["gather"]),
)


def describe_row(row: Mapping[str, Any]) -> str:
    mark = "correct" if row["correct"] else "wrong"
    return (
        f"problem {row['index']}: answer {common.for_people(row['prediction'])} (gold {row['gold']}, {mark}); "
        f"branch answers {common.for_people(row['branch_answers'])}; scores {common.for_people(row['branch_scores'])}"
    )


def summarize(rows: Sequence[Mapping[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
    n = len(rows) or 1
    merged = {"merged_branches": sum(r["merged_branches"] for r in rows)} if options.merge_branches else {}
    return {
        "majority_vote_accuracy": sum(r["majority_correct"] for r in rows) / n,
        **merged,
        **verification.summarize(v for r in rows for v in r["verifications"]),
        **aggregate.summarize(rows),
    }


def main(argv: list[str] | None = None) -> int:
    return common.program_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
