from fractions import Fraction

import pytest

from sglang_rksc.programs import game24
from sglang_rksc.programs.game24 import State, apply_step, parse_proposals


def test_valid_step_computes_what_is_left():
    child = apply_step(State.start((4, 6, 1, 1)), "4 * 6 = 24 (left: 1 1 24)")
    assert child is not None and child.left == (1, 1, 24) and child.steps == ("4 * 6 = 24",)
    assert not child.done and not child.solved


@pytest.mark.parametrize(
    "line",
    [
        "4 * 6 = 25 (left: 1 1 25)",  # wrong arithmetic
        "4 * 7 = 28 (left: 1 1 28)",  # 7 is not among the numbers
        "1 / 0 = 0",  # division by zero
        "4 and 6 make 24",  # not a step
        "6 * 6 = 36",  # 6 is there only once
    ],
)
def test_invalid_steps_are_rejected(line):
    assert apply_step(State.start((4, 6, 1, 1)), line) is None


def test_exact_fractions_and_other_operator_signs():
    child = apply_step(State.start((1, 3, 4, 6)), "1 / 3 = 1/3")
    assert child is not None and Fraction(1, 3) in child.left and child.left_text() == "1/3 4 6"
    assert apply_step(State.start((2, 12)), "2 × 12 = 24").solved
    assert apply_step(State.start((30, 6)), "30 - 6 = 24 (left: 24)").solved
    assert apply_step(State.start((2, 2)), "2 ÷ 2 = 1").left == (1,)


def test_parse_proposals_keeps_valid_distinct_steps_in_order():
    state = State.start((2, 3, 4, 5))
    text = "\n".join(
        [
            "2 + 3 = 5 (left: 4 5 5)",
            "3 + 2 = 5 (left: 4 5 5)",  # same numbers left as the first: dropped
            "2 * 3 = 7 (left: 4 5 7)",  # wrong: dropped
            "4 * 5 = 20 (left: 2 3 20)",
            "5 - 4 = 1 (left: 1 2 3)",
        ]
    )
    children = parse_proposals(state, text)
    assert [c.steps[-1] for c in children] == ["2 + 3 = 5", "4 * 5 = 20", "5 - 4 = 1"]
    assert len(parse_proposals(state, text, limit=2)) == 2


def test_a_full_solution_reaches_24():
    state = State.start((1, 1, 11, 11))
    for line in ("1 + 11 = 12", "1 + 11 = 12", "12 + 12 = 24"):
        state = apply_step(state, line)
        assert state is not None
    assert state.solved and len(state.steps) == 3


def test_load_puzzles():
    first = game24.load_puzzles(0, 2)
    assert [p.numbers for p in first] == [(1, 1, 4, 6), (1, 1, 11, 11)]
    assert len(game24.load_puzzles()) == 899
    with pytest.raises(ValueError):
        game24.load_puzzles(898, 3)
