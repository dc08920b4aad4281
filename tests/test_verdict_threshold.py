"""The verifier's verdict threshold: the rule, its calibration on recorded P(yes) values, and where it applies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sglang_rksc.lang.verify import thresholded
from sglang_rksc.programs import common, model_profiles, verification
from sglang_rksc.tools.cgee.threshold import calibrate, verdict_accuracy

RECORDED = Path(__file__).parent / "data" / "qwen-verdicts-gsm8k-0-99.json"


def test_the_rule():
    assert thresholded([0.7, 0.3], 0, None) == 0 and thresholded([0.3, 0.7], 0, None) == 1
    assert thresholded([0.7, 0.3], 0, 0.8) == 1 and thresholded([0.85, 0.15], 0, 0.8) == 0
    # Below the threshold: the most probable other choice, not the accepting one.
    assert thresholded([0.5, 0.1, 0.3, 0.1], 0, 0.9) == 2
    assert thresholded([0.2, 0.8], 1, 0.8) == 1 and thresholded([0.2, 0.8], 1, 0.81) == 0


def _recorded_calls() -> list[tuple[list[list[float]], bool]]:
    calls = json.loads(RECORDED.read_text())["calls"]
    return [([[p, 1.0 - p]], right) for p, right in calls]  # a one-layer profile: the full-depth value


def test_the_shipped_threshold_is_the_calibration_of_the_recorded_values():
    calls = _recorded_calls()
    assert len(calls) == 300 and sum(right for _, right in calls) == 100
    threshold, right = calibrate(calls)
    shipped = model_profiles.QWEN_CODER_1_5B.verdict_threshold
    assert shipped == pytest.approx(threshold, abs=1e-6)
    # On these calls it beats the verdict that ignores the solution ("no" to all) and the most probable choice.
    assert verdict_accuracy(calls, shipped) == right > 200 > verdict_accuracy(calls, 0.5)


class _Served:
    """A backend as the programs see it: only the served model's name matters here."""

    def __init__(self, name: str) -> None:
        self.name = name

    def get_model_name(self) -> str:
        return self.name


def test_the_profile_threshold_reaches_the_yes_no_verifications_only():
    qwen = _Served("/models/Qwen2.5-Coder-1.5B-Instruct-bf16")
    options = argparse.Namespace(max_tokens=None, merge_branches=None)
    scv = common.resolve_for_model(qwen, options, "self_consistency_verify")
    tot = common.resolve_for_model(qwen, options, "tree_of_thought")
    assert scv.verdict_threshold == model_profiles.QWEN_CODER_1_5B.verdict_threshold and tot.verdict_threshold is None
    select = verification.step("v", ["yes", "no"], scv.verifier("cgee"), candidate=None)
    assert select.choices_method.threshold == scv.verdict_threshold
    assert verification.step("v", ["yes", "no"], tot.verifier("cgee"), candidate=None).choices_method.threshold is None
    smol = common.resolve_for_model(_Served("SmolLM2-135M-Instruct"), options, "self_consistency_verify")
    assert smol.verdict_threshold is None  # not calibrated: the more probable answer


def test_a_thresholded_verdict_is_neither_gated_nor_cut_short():
    qwen = _Served("/models/Qwen2.5-Coder-1.5B-Instruct-bf16")
    options = argparse.Namespace(max_tokens=None, merge_branches=None)
    scv = common.resolve_for_model(qwen, options, "self_consistency_verify")
    tot = common.resolve_for_model(qwen, options, "tree_of_thought")
    for mode in ("cgee", "audit"):
        yes_no = verification.step("v", ["yes", "no"], scv.verifier(mode), candidate="solution").choices_method
        assert (yes_no.gate, yes_no.early_exit, yes_no.threshold) == (None, False, scv.verdict_threshold)
        assert yes_no.audit == (mode == "audit")
        assert verification.candidate_args(scv.verifier(mode)) == {}  # no logprobs asked for a gate that never runs
        # The five-way score has no threshold: CGEE's gate and exit still apply there.
        score = verification.step("v", ["1", "5"], tot.verifier(mode), candidate="solution").choices_method
        assert score.gate is not None and score.early_exit and score.threshold is None
        assert verification.candidate_args(tot.verifier(mode))["return_logprob"] is True
