"""Scoring and plumbing of the programs, without a server."""

from __future__ import annotations

import math
from argparse import Namespace

import pytest

from sglang_rksc.programs import common, game_of_24, gsm8k, self_consistency_verify, tree_of_thought, verification

PROBLEM = gsm8k.Problem(7, "How many?", "18")


def _meta(rid: str, prompt: int, cached: int, completion: int) -> dict:
    return {"id": rid, "prompt_tokens": prompt, "cached_tokens": cached, "completion_tokens": completion}


def _verification(verdict: str, skipped: bool) -> dict:
    return verification.record(verdict, {"skipped": skipped, "layers_run": 0 if skipped else 30, "num_layers": 30})


def test_tree_of_thought_votes_by_score_and_counts_shared_calls_once():
    plan = _meta("p", 40, 30, 10)
    leaves = [
        {
            "plan": "",
            "solution": "The answer is 18.",
            "reflection": "",
            "score": 5,
            "weight": 1,
            "spans": {"plan": None, "solution": None},
            "verification": _verification("5", skipped=False),
            "meta": [plan, _meta("s1", 60, 50, 12), _meta("r1", 80, 70, 6)],
        },
        {
            "plan": "",
            "solution": "The answer is 20.",
            "reflection": "",
            "score": 1,
            "weight": 1,
            "spans": {"plan": None, "solution": None},
            "verification": _verification("1", skipped=False),
            "meta": [plan, _meta("s2", 60, 50, 12), _meta("r2", 80, 70, 6)],
        },
        {
            "plan": "",
            "solution": "The answer is 20.",
            "reflection": "",
            "score": 1,
            "weight": 1,
            "spans": {"plan": None, "solution": None},
            "verification": _verification("1", skipped=False),
            "meta": [plan, _meta("s3", 60, 50, 12), _meta("r3", 80, 70, 6)],
        },
    ]
    row = tree_of_thought.score_problem(PROBLEM, leaves)
    assert row["prediction"] == "18" and row["correct"]  # 5 outweighs 1 + 1
    assert row["majority_prediction"] == "20" and not row["majority_correct"]
    assert row["merged_branches"] == 0
    # The plan request is shared by all three leaves: 1 + 3 + 3 calls.
    assert row["tokens"] == {
        "requests": 7,
        "prompt_tokens": 40 + 6 * 70,
        "cached_tokens": 30 + 3 * 50 + 3 * 70,
        "completion_tokens": 10 + 3 * 12 + 3 * 6,
    }


def test_fan_out_follows_depth():
    assert [tree_of_thought._fan_out(2, level, 3) for level in (1, 2, 3)] == [3, 3, 1]
    assert [tree_of_thought._fan_out(1, level, 3) for level in (1, 2, 3)] == [3, 1, 1]


def test_yes_probability_from_select_logprobs_is_verifys_scale():
    # What SGLang's select reports for " yes" / " no": the prompt's last token (the same in both, SGLang's
    # token healing) and the choice's token. P(yes | yes or no) = 0.6 / (0.6 + 0.2); the length-normalised
    # logprobs, which average in the shared token, read it as sqrt(3) / (1 + sqrt(3)), about 0.63.
    shared = [-0.7, 11, "\n"]
    meta = {
        "input_token_logprobs": [[shared, [math.log(0.6), 12, " yes"]], [shared, [math.log(0.2), 13, " no"]]],
        "normalized_prompt_logprobs": [(-0.7 + math.log(0.6)) / 2, (-0.7 + math.log(0.2)) / 2],
    }
    assert self_consistency_verify.yes_probability(meta) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        self_consistency_verify.yes_probability({"input_token_logprobs": [[shared]]})


def test_self_consistency_weights_by_the_verifier():
    samples = [
        {
            "solution": "The answer is 18.",
            "verdict": "yes",
            "p_yes": 0.9,
            "weight": 1,
            "meta": [_meta("a", 50, 40, 20)],
            "verification": _verification("yes", skipped=True),
        },
        {
            "solution": "The answer is 3.",
            "verdict": "no",
            "p_yes": 0.3,
            "weight": 1,
            "meta": [_meta("b", 50, 40, 20)],
            "verification": _verification("no", skipped=False),
        },
        {
            "solution": "The answer is 3.",
            "verdict": "no",
            "p_yes": 0.3,
            "weight": 1,
            "meta": [_meta("c", 50, 40, 20)],
            "verification": _verification("no", skipped=False),
        },
    ]
    row = self_consistency_verify.score_problem(PROBLEM, samples)
    assert row["prediction"] == "18" and row["majority_prediction"] == "3"
    assert row["verdicts_right"] == [True, True, True]
    summary = self_consistency_verify.summarize([row], Namespace(merge_branches=None))
    # Only the figures that apply: no merging asked for, no audited call, no server timing.
    assert summary == {
        "majority_vote_accuracy": 0.0,
        "verifications": 3,
        "verdict_yes_rate": pytest.approx(1 / 3),
        "verdict_accuracy": 1.0,
        "always_majority_verdict_accuracy": pytest.approx(2 / 3),  # "no" to all: two of the three are wrong
        "verify_calls": 3,
        "verify_skipped": 1,
        "verify_mean_layers_run": 30,
        "verify_num_layers": 30,
    }
    merged = self_consistency_verify.summarize([row], Namespace(merge_branches=0.8))
    assert merged["merged_samples"] == 0


def test_game_of_24_row():
    puzzle = game_of_24.game24.Puzzle(1, (1, 1, 11, 11))
    row = game_of_24.score_puzzle(
        puzzle,
        {
            "solved": True,
            "steps": ["1 + 11 = 12", "1 + 11 = 12", "12 + 12 = 24"],
            "trace": [[], [], []],
            "meta": [_meta("x", 300, 200, 40)],
            "merged": 2,
        },
    )
    assert row["correct"] and row["prediction"] == "1 + 11 = 12; 1 + 11 = 12; 12 + 12 = 24"
    assert row["merged_states"] == 2
    assert game_of_24.summarize([row], Namespace(merge_branches=0.8))["merged_states"] == 2
    assert "merged_states" not in game_of_24.summarize([row], Namespace(merge_branches=None))
    empty = {"solved": False, "steps": [], "trace": [], "meta": [], "merged": 0}
    assert game_of_24.score_puzzle(puzzle, empty)["prediction"] is None


def test_merged_leaves_vote_with_their_group_size():
    """A merged leaf stands for its group: its score and its majority vote count `weight` times."""
    leaves = [
        {"plan": "", "solution": "The answer is 18.", "reflection": "", "score": 2, "weight": 3, "spans": {},
         "verification": _verification("2", skipped=False), "meta": [_meta("s1", 60, 50, 12), _meta("s2", 60, 50, 12)]},
        {"plan": "", "solution": "The answer is 20.", "reflection": "", "score": 5, "weight": 1, "spans": {},
         "verification": _verification("5", skipped=False), "meta": [_meta("s3", 60, 50, 12)]},
    ]  # fmt: skip
    row = tree_of_thought.score_problem(PROBLEM, leaves)
    assert row["prediction"] == "18" and row["majority_prediction"] == "18"  # 2 * 3 > 5 * 1; 3 > 1
    assert row["branch_weights"] == [3, 1] and row["merged_branches"] == 2
    assert row["tokens"]["requests"] == 3  # merged members were generated: counted
    leaves[0]["weight"] = 2
    row = tree_of_thought.score_problem(PROBLEM, leaves)
    assert row["prediction"] == "20" and row["majority_prediction"] == "18"  # 2 * 2 < 5; 2 > 1
    samples = [
        {"solution": "The answer is 3.", "verdict": "no", "p_yes": 0.3, "weight": 3,
         "verification": _verification("no", skipped=False), "meta": [_meta("a", 50, 40, 20), _meta("b", 50, 40, 20)]},
        {"solution": "The answer is 18.", "verdict": "yes", "p_yes": 0.8, "weight": 1,
         "verification": _verification("yes", skipped=False), "meta": [_meta("c", 50, 40, 20)]},
    ]  # fmt: skip
    row = self_consistency_verify.score_problem(PROBLEM, samples)
    assert row["prediction"] == "3" and row["majority_prediction"] == "3"  # 0.9 > 0.8
    assert row["merged_samples"] == 2 and row["tokens"]["requests"] == 3


def test_merge_option_is_off_by_default_and_validated():
    for program in (tree_of_thought, self_consistency_verify, game_of_24):
        assert common.program_options(program, []).merge_branches is None
        assert common.program_options(program, ["--merge-branches", "0.9"]).merge_branches == 0.9
        with pytest.raises(ValueError, match="within \\[-1, 1\\]"):
            common.program_options(program, ["--merge-branches", "1.5"])


def test_program_options_parse_and_validate():
    options = common.program_options(tree_of_thought, ["--branches", "3"])
    assert options.branches == 3 and options.depth == 2 and options.temperature == 0.7
    with pytest.raises(ValueError, match="--branches"):
        common.program_options(tree_of_thought, ["--branches", "0"])
    with pytest.raises(ValueError, match="unrecognized"):
        common.program_options(game_of_24, ["--samples", "3"])


def test_summarize_sums_tokens():
    rows = [
        {"correct": True, "tokens": _meta("a", 10, 5, 3) | {"requests": 1}},
        {"correct": False, "tokens": _meta("b", 20, 15, 4) | {"requests": 2}},
    ]
    for row in rows:
        row["tokens"].pop("id")
    summary = common.summarize(rows, 2.0)
    assert summary["accuracy"] == 0.5 and summary["prompt_tokens"] == 30 and summary["requests"] == 3
    assert summary["cache_hit_rate"] == pytest.approx(20 / 30)


def test_budgets_and_the_merge_threshold_follow_the_served_model():
    from sglang_rksc.programs import common

    class Endpoint:  # what the programs ask of SGLang's RuntimeEndpoint: the served model's name
        def __init__(self, name: str) -> None:
            self.name = name

        def get_model_name(self) -> str:
            return self.name

    auto = Namespace(max_tokens=None, merge_branches="auto")
    qwen = common.resolve_for_model(Endpoint("/cache/Qwen2.5-Coder-1.5B-Instruct-bf16"), auto, "tree_of_thought")
    small = common.resolve_for_model(Endpoint("/cache/SmolLM2-135M-Instruct-bf16"), auto, "tree_of_thought")
    assert (qwen.profile, small.profile) == ("qwen2.5-coder-1.5b", "smollm2-135m")
    assert qwen.max_tokens > small.max_tokens == 128 and (qwen.merge_threshold, small.merge_threshold) == (0.9, 0.8)
    # the model's CGEE settings reach its verifications: its gate, and the first layer checked
    qwen_verify = qwen.verifier("cgee")
    assert qwen_verify.exit_params == {"min_layer": 25} and qwen_verify.gate["top"] == 0.9
    assert small.verifier("audit").exit_params == {} and small.verifier("select").gated is False
    flagged = common.resolve_for_model(
        Endpoint("some/other-model"), Namespace(max_tokens=50, merge_branches=None), "game_of_24"
    )
    assert (flagged.profile, flagged.max_tokens, flagged.merge_threshold) == ("smollm2-135m", 50, None)
    # Self-consistency's solutions are finished when they merge: auto merges none, a threshold given still does.
    qwen_sc = common.resolve_for_model(Endpoint("Qwen2.5-Coder-1.5B"), auto, "self_consistency_verify")
    assert qwen_sc.merge_threshold is None and qwen_sc.max_tokens == 384
    given = Namespace(max_tokens=None, merge_branches=0.85)
    qwen_sc_given = common.resolve_for_model(Endpoint("Qwen2.5-Coder-1.5B"), given, "self_consistency_verify")
    assert qwen_sc_given.merge_threshold == 0.85
