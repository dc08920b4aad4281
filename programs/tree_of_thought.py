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
import time
from typing import Any

import sglang as sgl

from sglang_rksc.programs import common, gsm8k

PLAN_PROMPT = (
    "Make a short plan for solving this math problem. Say which quantities you will compute and in which "
    "order, without doing the arithmetic yet.\nProblem: {question}"
)
EXECUTE_PROMPT = (
    "Now follow the plan: compute step by step with the real numbers. "
    "End with the line 'The answer is <number>.'"
)
REFLECT_PROMPT = "Check the solution above carefully. Is every step right? Point out any mistake."
SCORE_PROMPT = "Rate the solution from 1 (wrong) to 5 (certainly right). Reply with the number only."
SCORES = ["1", "2", "3", "4", "5"]


def _fan_out(depth: int, level: int, branches: int) -> int:
    """Levels 1..depth fork `branches` ways; deeper levels continue a single line."""
    return branches if level <= depth else 1


@sgl.function
def tree_of_thought(s, question: str, branches: int, depth: int, max_tokens: int, temperature: float):
    """Plan (level 1) -> execute (level 2) -> reflect and score (level 3); returns the leaves."""
    s += sgl.user(PLAN_PROMPT.format(question=question))
    plans = common.fork(s, _fan_out(depth, 1, branches))
    plans += sgl.assistant(sgl.gen("plan", max_tokens=max_tokens, temperature=temperature))

    solutions = []
    for plan in plans:
        plan += sgl.user(EXECUTE_PROMPT)
        forks = common.fork(plan, _fan_out(depth, 2, branches))
        forks += sgl.assistant(sgl.gen("solution", max_tokens=max_tokens, temperature=temperature))
        solutions.extend((plan, f) for f in forks)

    leaves = []
    for plan, solution in solutions:
        solution += sgl.user(REFLECT_PROMPT)
        forks = common.fork(solution, _fan_out(depth, 3, branches))
        forks += sgl.assistant(sgl.gen("reflection", max_tokens=max_tokens // 2, temperature=temperature))
        forks += sgl.user(SCORE_PROMPT)
        forks += sgl.assistant(sgl.select("score", choices=SCORES))
        leaves.extend((plan, solution, f) for f in forks)

    out = []
    for plan, solution, reflection in leaves:
        out.append(
            {
                "plan": plan["plan"],
                "solution": solution["solution"],
                "reflection": reflection["reflection"],
                "score": int(reflection["score"]),
                "meta": [
                    plan.get_meta_info("plan"),
                    solution.get_meta_info("solution"),
                    reflection.get_meta_info("reflection"),
                ],
            }
        )
    return out


def score_problem(problem: gsm8k.Problem, leaves: list[dict[str, Any]]) -> dict[str, Any]:
    """Vote over the leaves' answers, each weighted by its reflection score."""
    answers = [gsm8k.extract_answer(leaf["solution"]) for leaf in leaves]
    weights = [float(leaf["score"]) for leaf in leaves]
    prediction = gsm8k.weighted_vote(answers, weights)
    # A plan or solution shared by several leaves was generated once: count each call once.
    seen: set[int] = set()
    tokens = common.TokenCounts()
    for leaf in leaves:
        for meta in leaf["meta"]:
            if meta is not None and id(meta) not in seen:
                seen.add(id(meta))
                tokens.add_meta(meta)
    return {
        "index": problem.index,
        "question": problem.question,
        "gold": problem.answer,
        "prediction": prediction,
        "correct": prediction == problem.answer,
        "branch_answers": answers,
        "branch_scores": [leaf["score"] for leaf in leaves],
        "tokens": tokens.as_dict(),
        "branches": [{k: leaf[k] for k in ("plan", "solution", "reflection", "score")} for leaf in leaves],
    }


def run(
    backend: Any,
    problems: list[gsm8k.Problem],
    *,
    branches: int,
    depth: int,
    max_tokens: int,
    temperature: float,
    parallel: int,
    progress_bar: bool = True,
) -> list[dict[str, Any]]:
    """Run the program on `problems`; one result row per problem, in order."""
    arguments = [
        dict(question=p.question, branches=branches, depth=depth, max_tokens=max_tokens, temperature=temperature)
        for p in problems
    ]
    states = tree_of_thought.run_batch(
        arguments, backend=backend, num_threads=parallel, progress_bar=progress_bar
    )
    rows = []
    for problem, state in zip(problems, states):
        if state.ret_value is None:
            raise RuntimeError(f"the program returned nothing for problem {problem.index}")
        rows.append(score_problem(problem, state.ret_value))
    return rows


def summarize(rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    tokens = common.TokenCounts(**rows[0]["tokens"]) if rows else common.TokenCounts()
    for row in rows[1:]:
        tokens += common.TokenCounts(**row["tokens"])
    return {
        "problems": len(rows),
        "accuracy": sum(r["correct"] for r in rows) / len(rows) if rows else 0.0,
        "seconds": seconds,
        **tokens.as_dict(),
        "cache_hit_rate": tokens.cache_hit_rate,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.programs.tree_of_thought",
        description="Tree-of-thought on GSM8K with fork: plan, branch, execute, reflect, weighted vote.",
    )
    data = parser.add_argument_group("problems")
    data.add_argument("--start", type=common.non_negative_int, default=0,
                      help="first GSM8K test problem (0-299 are for calibration, 300+ for reporting); default 0")
    data.add_argument("--num-problems", type=common.positive_int, default=3, help="how many problems; default 3")
    tree = parser.add_argument_group("tree")
    tree.add_argument("--branches", type=common.positive_int, default=2,
                      help="how many ways each forking level branches; default 2")
    tree.add_argument("--depth", type=int, choices=[1, 2, 3], default=2,
                      help="how many levels fork: 1 plan, 2 plan and execution, 3 also reflection; default 2")
    tree.add_argument("--max-tokens", type=common.positive_int, default=128,
                      help="tokens per plan or solution (reflections get half); default 128")
    tree.add_argument("--temperature", type=common.temperature, default=0.7,
                      help="sampling temperature of the generations; 0 is greedy (all branches then agree); default 0.7")
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--parallel", type=common.positive_int, default=4,
                           help="problems in flight at once; default 4")
    run_group.add_argument("--output", help="write one JSON line per problem to this file")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar and no per-problem lines")
    common.add_endpoint_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        problems = gsm8k.load_problems(args.start, args.num_problems)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with common.endpoint(args) as url:
        backend = common.make_backend(url, args.chat_template)
        started = time.perf_counter()
        rows = run(
            backend, problems, branches=args.branches, depth=args.depth, max_tokens=args.max_tokens,
            temperature=args.temperature, parallel=args.parallel, progress_bar=not args.quiet,
        )
        seconds = time.perf_counter() - started
    if not args.quiet:
        for row in rows:
            t = row["tokens"]
            mark = "correct" if row["correct"] else "wrong"
            print(
                f"problem {row['index']}: answer {row['prediction']} (gold {row['gold']}, {mark}); "
                f"branch answers {row['branch_answers']}; cache hits {t['cached_tokens']}/{t['prompt_tokens']} "
                f"prompt tokens over {t['requests']} generations"
            )
    summary = summarize(rows, seconds)
    print(
        f"{summary['problems']} problems in {seconds:.1f} s: accuracy {summary['accuracy']:.2f}; "
        f"server-reported cache hits {summary['cached_tokens']}/{summary['prompt_tokens']} prompt tokens "
        f"({summary['cache_hit_rate']:.0%}); {summary['completion_tokens']} tokens generated"
    )
    if args.output:
        common.write_jsonl(args.output, rows)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
