"""Game of 24 by breadth-first tree-of-thought search, as an ordinary SGLang program.

From the four numbers, each step asks the model to propose next steps for
every state in the frontier (`fork` from a shared few-shot prompt), keeps the
proposals whose arithmetic is exact, asks the model to value each new state
(`select`: sure / likely / impossible), and keeps the best `--breadth`. After
three steps a state holding exactly 24 solves the puzzle. Terminal states
(one number left) are valued exactly instead of by the model.

    python -m sglang_rksc.programs.game_of_24 --num-problems 3 --breadth 3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import sglang as sgl

from sglang_rksc.programs import common, game24

NAME = "game_of_24"
DESCRIPTION = (
    "Game of 24 by breadth-first tree-of-thought: propose steps (fork), value states (select), keep the best b."
)

PROPOSE_PREFIX = """Reach 24 with + - * /. A step combines two of the numbers left into one new number.
Input: 3 5 7 9
Possible next steps:
3 + 5 = 8 (left: 7 8 9)
9 - 7 = 2 (left: 2 3 5)
5 * 3 = 15 (left: 7 9 15)
9 / 3 = 3 (left: 3 5 7)
7 + 9 = 16 (left: 3 5 16)
9 - 5 = 4 (left: 3 4 7)
5 + 7 = 12 (left: 3 9 12)
"""
VALUE_PREFIX = """Can these numbers reach 24 with + - * /? Judge: sure, likely or impossible.
4 6: sure
2 3 4: sure
1 1 2: impossible
5 7 12: sure
3 9 10: likely
11 12: impossible
1 2 3: impossible
4 5 6: likely
"""
VALUES = {"sure": 20.0, "likely": 1.0, "impossible": 0.001}


@sgl.function
def game_of_24(
    s,
    numbers: list[int],
    breadth: int,
    proposals: int,
    max_tokens: int,
    temperature: float,
    mark: bool = False,
    merge: float | None = None,
):
    """Breadth-first search; returns the best final state and what each step kept.

    Every proposal list is used once (the next step prompts again from the shared prefix), so with
    `mark` each is marked finished once parsed. The valuations are not marked: SGLang's `select`
    reports no request id to name them by."""
    bases = s.fork(2)
    proposer, valuer = bases[0], bases[1]
    proposer += PROPOSE_PREFIX
    valuer += VALUE_PREFIX
    frontier = [game24.State.start(tuple(numbers))]
    metas, trace, merged = [], [], 0
    for _ in range(len(numbers) - 1):
        forks = common.fork(proposer, len(frontier))
        for f, state in zip(forks, frontier, strict=True):
            f += f"Input: {state.left_text()}\nPossible next steps:\n"
            f += sgl.gen("steps", max_tokens=max_tokens, temperature=temperature, stop=["Input:", "\n\n"])
        # With `merge`, states whose proposal lists are near-duplicates are expanded once, from
        # the first of them; the others' lists are not read, and the group's size breaks value ties.
        groups = common.merge(forks, "steps", merge)
        metas.extend(f.get_meta_info("steps") for f in forks)
        merged += groups.merged
        candidates, seen, support = [], set(), {}
        for members in groups.groups:
            f, state = forks[members[0]], frontier[members[0]]
            for child in game24.parse_proposals(state, f["steps"], limit=proposals):
                if child.left not in seen:
                    seen.add(child.left)
                    candidates.append(child)
                    support[child] = len(members)
        common.mark_branches(forks, "finished", mark)
        if not candidates:
            frontier = []
            break
        open_states = [c for c in candidates if not c.done]
        values = {c: (VALUES["sure"] if c.solved else 0.0) for c in candidates if c.done}
        if open_states:
            judges = common.fork(valuer, len(open_states))
            for judge, c in zip(judges, open_states, strict=True):
                judge += f"{c.left_text()}:" + sgl.select("value", choices=[f" {v}" for v in VALUES])
            for judge, c in zip(judges, open_states, strict=True):
                values[c] = VALUES[judge["value"].strip()]
        # sorted() is stable: among equal values the order the model proposed them wins.
        frontier = sorted(candidates, key=lambda c: (-values[c], -support[c]))[:breadth]
        trace.append([{"left": c.left_text(), "steps": list(c.steps), "value": values[c]} for c in frontier])
    best = frontier[0] if frontier else None
    return {
        "solved": bool(best and best.solved),
        "steps": list(best.steps) if best else [],
        "trace": trace,
        "meta": metas,
        "merged": merged,
    }


def score_puzzle(puzzle: game24.Puzzle, result: Mapping[str, Any]) -> dict[str, Any]:
    steps = result["steps"]
    return {
        "index": puzzle.index,
        "numbers": list(puzzle.numbers),
        "gold": "24",
        # The final answer is the chain of steps; only a complete one reaching 24 counts.
        "prediction": "; ".join(steps) if steps else None,
        "correct": result["solved"],
        "search": result["trace"],
        **common.call_accounting(result["meta"]),
        "merged_states": result["merged"],
    }


def add_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--breadth", type=common.positive_int, default=3, help="states kept after each step (b)")
    group.add_argument(
        "--proposals", type=common.positive_int, default=5, help="valid proposals taken from each state's list"
    )
    common.add_generation_arguments(
        group,
        max_tokens_help="tokens per list of proposals; default: the served model's profile "
        "(96 for both shipped models)",
        temperature_default=0.0,
        temperature_help="sampling temperature of the proposals; 0 is greedy",
    )
    common.add_branch_arguments(group, mark=True, merge_what="frontier states, by their proposal lists,")


def load_problems(start: int, count: int) -> list[game24.Puzzle]:
    return game24.load_puzzles(start, count)


run = common.ProgramRun(
    NAME,
    lambda: game_of_24,  # looked up when it runs
    arguments=lambda p, o: {"numbers": list(p.numbers), "breadth": o.breadth, "proposals": o.proposals},
    row=lambda p, v: score_puzzle(p, v),
)


def describe_row(row: Mapping[str, Any]) -> str:
    numbers = " ".join(map(str, row["numbers"]))
    outcome = "solved" if row["correct"] else "not solved"
    return f"puzzle {row['index']} ({numbers}): {outcome}; best steps: {common.for_people(row['prediction'])}"


def summarize(rows: Sequence[Mapping[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
    reached = [len(r["search"]) for r in rows]
    merged = {"merged_states": sum(r["merged_states"] for r in rows)} if options.merge_branches else {}
    return {"mean_steps_reached": sum(reached) / len(reached) if reached else 0.0, **merged}


def main(argv: list[str] | None = None) -> int:
    return common.program_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
