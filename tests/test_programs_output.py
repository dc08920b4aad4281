"""The programs' flags, the arguments their runs hand SGLang, and what they print for people; no server."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from sglang_rksc.programs import (
    common,
    game24,
    game_of_24,
    gsm8k,
    self_consistency_verify,
    tree_of_thought,
    verification,
    verifier_check,
)

PROGRAMS = (tree_of_thought, self_consistency_verify, game_of_24, verifier_check)

# Every flag of each program's command line with its default, as they were before the programs shared
# their argument blocks (recorded from `program_parser(program)` on that code).
RUN_FLAGS = {
    "--start": 0,
    "--num-problems": 3,
    "--parallel": 4,
    "--output": None,
    "--quiet": False,
    "--retries": 1,
    "--url": None,
    "--model": None,
    "--server-args": "",
    "--server-log": None,
    "--chat-template": "auto",
}
OWN_FLAGS = {
    "tree_of_thought": {
        "--branches": 2,
        "--depth": 2,
        "--max-tokens": None,
        "--diversify": False,
        "--temperature": 0.7,
        "--verifier": "select",
        "--mark-branches": "on",
        "--merge-branches": None,
        "--aggregate": "vote",
        "--packets": "on",
    },
    "self_consistency_verify": {
        "--samples": 4,
        "--max-tokens": None,
        "--diversify": False,
        "--temperature": 0.7,
        "--verifier": "select",
        "--merge-branches": None,
        "--aggregate": "vote",
        "--packets": "on",
    },
    "game_of_24": {
        "--breadth": 3,
        "--proposals": 5,
        "--max-tokens": None,
        "--temperature": 0.0,
        "--mark-branches": "on",
        "--merge-branches": None,
    },
    "verifier_check": {"--verifier": "select"},
}
# Help texts that differ from program to program and so are each program's own.
OWN_HELP = {
    ("tree_of_thought", "--max-tokens"): "tokens per plan or solution (reflections get half); default: the served "
    "model's profile (SmolLM2 128, Qwen2.5-Coder-1.5B 384)",
    ("self_consistency_verify", "--max-tokens"): "tokens per solution; default: the served model's profile "
    "(SmolLM2 160, Qwen2.5-Coder-1.5B 384)",
    ("game_of_24", "--max-tokens"): "tokens per list of proposals; default: the served model's profile (96 for "
    "both shipped models)",
    ("tree_of_thought", "--temperature"): "sampling temperature; 0 is greedy (all branches then agree)",
    ("self_consistency_verify", "--temperature"): "sampling temperature of the solutions; 0 is greedy (all "
    "samples then agree)",
    ("game_of_24", "--temperature"): "sampling temperature of the proposals; 0 is greedy",
    ("tree_of_thought", "--diversify"): "open each branch's turn with its own phrase, so that greedy branches differ",
    ("self_consistency_verify", "--diversify"): "open each solution with its own phrase, so that greedy samples differ",
}


def _flags(parser: Any) -> dict[str, Any]:
    """Option -> default, `--help` aside."""
    return {action.option_strings[0]: action.default for action in parser._actions if action.dest != "help"}


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.NAME)
def test_every_program_keeps_its_flags_and_defaults(program):
    own = OWN_FLAGS[program.NAME]
    own_parser = common.program_parser(program, with_run_args=False)
    assert _flags(own_parser) == own
    assert _flags(common.program_parser(program)) == {**RUN_FLAGS, **own}
    helps = {action.option_strings[0]: action.help for action in own_parser._actions}
    for (name, flag), text in OWN_HELP.items():
        if name == program.NAME:
            assert helps[flag] == text
    text = " ".join(common.program_parser(program).format_help().split())
    assert all(flag in text for flag in own)


def test_shared_flags_have_one_help_text_in_every_program():
    helps: dict[str, set[str]] = {}
    for program in PROGRAMS:
        for action in common.program_parser(program, with_run_args=False)._actions:
            flag = action.option_strings[0]
            if (program.NAME, flag) not in OWN_HELP and flag not in ("-h", "--merge-branches"):
                helps.setdefault(flag, set()).add(action.help)
    assert all(len(texts) == 1 for texts in helps.values()), helps


class _Endpoint:
    """What a run asks of SGLang's RuntimeEndpoint: the served model's name."""

    def get_model_name(self) -> str:
        return "/cache/SmolLM2-135M-Instruct-bf16"


class _Function:
    """An `@sgl.function` stand-in: records the arguments of `run_batch` and returns `values`."""

    def __init__(self, name: str, values: list[Any]) -> None:
        self.func = SimpleNamespace(__name__=name)
        self.values = values
        self.arguments: list[dict[str, Any]] = []

    def run_batch(self, arguments, *, backend, num_threads, progress_bar):
        # The programs run one problem per call (so each row can be recorded as it finishes), in order here.
        start = len(self.arguments)
        self.arguments += list(arguments)
        return [SimpleNamespace(ret_value=v) for v in self.values[start : start + len(arguments)]]


def _meta(rid: str) -> dict[str, Any]:
    return {"id": rid, "prompt_tokens": 10, "cached_tokens": 4, "completion_tokens": 3}


def _record(verdict: str) -> dict[str, Any]:
    return verification.record(verdict, {})


def _leaf(solution: str, score: int, rid: str) -> dict[str, Any]:
    return {
        "plan": "",
        "solution": solution,
        "reflection": "",
        "score": score,
        "weight": 1,
        "spans": {"plan": None, "solution": None},
        "verification": _record(str(score)),
        "meta": [_meta(rid)],
    }


def _sample(solution: str, verdict: str, p_yes: float, rid: str) -> dict[str, Any]:
    return {
        "solution": solution,
        "verdict": verdict,
        "p_yes": p_yes,
        "weight": 1,
        "verification": _record(verdict),
        "meta": [_meta(rid)],
    }


PROBLEM = gsm8k.Problem(7, "How many?", "18")
TREE_VALUE = {
    "leaves": [
        _leaf("The answer is 2.", 5, "a"),
        _leaf("I cannot tell.", 1, "b"),
        _leaf("The answer is 8.", 3, "c"),
        _leaf("The answer is 2.", 2, "d"),
    ],
    "gather": None,
}
SAMPLES_VALUE = {
    "samples": [
        _sample("The answer is 18.", "yes", 0.9, "a"),
        _sample("Nothing to say.", "no", 0.2, "b"),
    ],
    "gather": None,
}
PUZZLE = game24.Puzzle(3, (1, 2, 3, 4))
UNSOLVED_VALUE = {"solved": False, "steps": [], "trace": [[]], "meta": [_meta("x")], "merged": 0}


def _check_problem() -> verifier_check.CheckProblem:
    (problem,) = verifier_check.load_problems(0, 1)
    return problem


def _judged(n: int) -> list[dict[str, Any]]:
    return [{"verdict": "yes", "p_yes": 0.75, "verification": _record("yes"), "meta": _meta(f"v{i}")} for i in range(n)]


def _run(monkeypatch, program, attribute: str, value: Any, problems: list[Any], argv: list[str]):
    from sglang.lang.global_config import global_config

    function = _Function(attribute, [value] * len(problems))
    monkeypatch.setattr(program, attribute, function)
    monkeypatch.setattr(global_config, "enable_precache_with_tracing", False)  # the stand-in cannot be traced
    options = common.program_options(program, argv)
    rows = program.run(_Endpoint(), problems, options, parallel=1, progress_bar=False)  # calls in order
    return function.arguments, rows


def _parameters(program, attribute: str) -> set[str]:
    """The keyword parameters of the program's `@sgl.function` (its state `s` aside)."""
    return set(inspect.signature(getattr(program, attribute).func).parameters) - {"s"}


def test_tree_of_thought_run_hands_sglang_its_flags_and_the_model_budget(monkeypatch):
    parameters = _parameters(tree_of_thought, "tree_of_thought")
    argv = ["--branches", "3", "--diversify", "--verifier", "cgee", "--merge-branches", "auto", "--aggregate", "usc"]
    arguments, rows = _run(monkeypatch, tree_of_thought, "tree_of_thought", TREE_VALUE, [PROBLEM], argv)
    small = common.served_profile(_Endpoint())
    assert arguments == [
        {
            "question": "How many?",
            "branches": 3,
            "depth": 2,
            "max_tokens": 128,  # SmolLM2's profile
            "temperature": 0.7,
            "diversify": True,
            "verifier": verification.Verifier("cgee", dict(small.gate), dict(small.exit_params)),
            "mark": True,
            "merge": 0.8,
            "gather": "usc",
            "packets": "on",
        }
    ]
    assert set(arguments[0]) == parameters
    assert rows == [tree_of_thought.score_problem(PROBLEM, TREE_VALUE["leaves"], None)]


def test_self_consistency_run_hands_sglang_its_flags_and_the_model_budget(monkeypatch):
    parameters = _parameters(self_consistency_verify, "self_consistency_verify")
    argv = ["--samples", "2", "--max-tokens", "40", "--temperature", "0"]
    problems = [PROBLEM, gsm8k.Problem(8, "And now?", "3")]
    arguments, rows = _run(
        monkeypatch, self_consistency_verify, "self_consistency_verify", SAMPLES_VALUE, problems, argv
    )
    expected = {
        "samples": 2,
        "max_tokens": 40,
        "temperature": 0.0,
        "diversify": False,
        "verifier": verification.Verifier("select", dict(common.served_profile(_Endpoint()).gate), {}),
        "merge": None,
        "gather": "vote",
        "packets": "on",
    }
    assert arguments == [{"question": "How many?", **expected}, {"question": "And now?", **expected}]
    assert set(arguments[0]) == parameters
    assert [r["index"] for r in rows] == [7, 8] and rows[1]["gold"] == "3" and not rows[1]["correct"]
    assert rows[0] == self_consistency_verify.score_problem(PROBLEM, SAMPLES_VALUE["samples"], None)


def test_game_of_24_run_hands_sglang_its_flags_and_the_model_budget(monkeypatch):
    parameters = _parameters(game_of_24, "game_of_24")
    argv = ["--breadth", "2", "--mark-branches", "off", "--merge-branches", "0.5"]
    arguments, rows = _run(monkeypatch, game_of_24, "game_of_24", UNSOLVED_VALUE, [PUZZLE], argv)
    assert arguments == [
        {
            "numbers": [1, 2, 3, 4],
            "breadth": 2,
            "proposals": 5,
            "max_tokens": 96,
            "temperature": 0.0,
            "mark": False,
            "merge": 0.5,
        }
    ]
    assert set(arguments[0]) == parameters
    assert rows == [game_of_24.score_puzzle(PUZZLE, UNSOLVED_VALUE)]


def test_verifier_check_run_hands_sglang_the_written_solutions_and_the_model_verifier(monkeypatch):
    parameters = _parameters(verifier_check, "verifier_check")
    problem = _check_problem()
    judged = _judged(len(problem.candidates))
    arguments, rows = _run(monkeypatch, verifier_check, "verifier_check", judged, [problem], ["--verifier", "audit"])
    small = common.served_profile(_Endpoint())
    assert arguments == [
        {
            "question": problem.question,
            "solutions": [c.text for c in problem.candidates],
            "verifier": verification.Verifier("audit", dict(small.gate), dict(small.exit_params)),
        }
    ]
    assert set(arguments[0]) == parameters
    assert rows == [verifier_check.score_problem(problem, judged)]


def test_a_failed_program_names_its_error_for_people():
    failed = SimpleNamespace(ret_value=None, error=lambda: ValueError("the server went away"))
    function = SimpleNamespace(func=SimpleNamespace(__name__="tot"), run_batch=lambda *a, **k: [failed])
    with pytest.raises(RuntimeError, match="failed on item 0: ValueError: the server went away$"):
        common.run_batch_rows(function, [{}], _Endpoint(), parallel=1, progress_bar=False)


def _assert_for_people(text: str) -> None:
    for mark in ("[", "]", "'", '"', "None", "{"):
        assert mark not in text, f"{mark!r} in {text!r}"


def test_described_rows_print_no_python_repr():
    tree = tree_of_thought.describe_row(tree_of_thought.score_problem(PROBLEM, TREE_VALUE["leaves"]))
    _assert_for_people(tree)
    assert "branch answers 2, none, 8, 2" in tree and "scores 5, 1, 3, 2" in tree

    missing = {"leaves": [_leaf("No idea.", 4, "a")], "gather": None}
    nothing = tree_of_thought.describe_row(tree_of_thought.score_problem(PROBLEM, missing["leaves"]))
    _assert_for_people(nothing)
    assert nothing.startswith("problem 7: answer none (gold 18, wrong)")

    samples = self_consistency_verify.describe_row(
        self_consistency_verify.score_problem(PROBLEM, SAMPLES_VALUE["samples"])
    )
    _assert_for_people(samples)
    assert "samples 18, none" in samples and "verdicts yes, no" in samples

    puzzle = game_of_24.describe_row(game_of_24.score_puzzle(PUZZLE, UNSOLVED_VALUE))
    _assert_for_people(puzzle)
    assert puzzle == "puzzle 3 (1 2 3 4): not solved; best steps: none"

    problem = _check_problem()
    check = verifier_check.describe_row(verifier_check.score_problem(problem, _judged(len(problem.candidates))))
    _assert_for_people(check)
    assert "(0.75)" in check


def test_for_people_formats_lists_missing_values_and_floats():
    assert common.for_people(["2", None, 8, 0.5]) == "2, none, 8, 0.50"
    assert common.for_people(None) == "none" and common.for_people(()) == ""
    assert common.for_people(0.123) == "0.12" and common.for_people(3) == "3"
