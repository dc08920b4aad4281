"""CGEE pieces without a server: request validation, the exit rule, the gate, the verdict kernel."""

from __future__ import annotations

import math

import pytest
import torch

from sglang_rksc.config import ConfigError, add_arguments, split_args
from sglang_rksc.exit.criterion import RowExit, first_checked_layer, update_rows
from sglang_rksc.exit.spec import CALL_PARAMS, ExitDefaults, ExitRule, ExitSpec, parse, resolve_choices
from sglang_rksc.kernels.verdict import choice_distribution, entropy, verdict_step
from sglang_rksc.lang import Gate, confidence_of, verify

VOCAB = 100


def _encode(text: str) -> list[int]:
    return [ord(c) % VOCAB for c in text]


def test_choices_resolve_to_first_tokens_and_must_differ():
    assert resolve_choices({"choices": ["yes", "no"]}, _encode, VOCAB) == ([ord("y") % VOCAB, ord("n") % VOCAB], [])
    with pytest.raises(ValueError, match="differ in their first token"):
        resolve_choices({"choice_ids": [3, 3]}, _encode, VOCAB)
    with pytest.raises(ValueError, match="empty"):
        resolve_choices({"choices": ["yes", ""]}, _encode, VOCAB)
    with pytest.raises(ValueError, match="at least two"):
        resolve_choices({"choices": ["yes"]}, _encode, VOCAB)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        resolve_choices({"choice_ids": [1, VOCAB]}, _encode, VOCAB)


def test_parameters_are_checked_against_the_model():
    defaults = ExitDefaults(min_layer_fraction=0.5)
    spec = parse({}, [1, 2], num_layers=30, defaults=defaults)
    assert spec.min_layer == 15 and spec.rule == defaults.rule and spec.early_exit
    assert parse({"min_layer": 30}, [1, 2], 30, defaults).min_layer == 30
    for bad, message in [
        ({"min_layer": 31}, "model's depth"),
        ({"min_layer": 0}, "min_layer"),
        ({"theta": -1}, "theta"),
        ({"eps": "x"}, "eps"),
        ({"k": 0}, "k must be"),
        ({"early_exit": "yes"}, "true or false"),
        ({"colour": 1}, "unknown parameters"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse(bad, [1, 2], 30, defaults)
    assert not parse({}, [1, 2], 30, ExitDefaults(enabled=False)).early_exit


def test_server_flags_are_validated():
    _, config = split_args(["--rksc-cgee", "off", "--rksc-cgee-theta", "0.2"])
    assert not config.cgee.enabled and config.cgee.rule.theta == 0.2
    with pytest.raises(ConfigError, match="min-layer-fraction"):
        split_args(["--rksc-cgee-min-layer-fraction", "0"])
    with pytest.raises(ConfigError, match="cgee-k"):
        split_args(["--rksc-cgee-k", "0"])


def _spec(min_layer: int = 3, record: bool = False, **rule) -> ExitSpec:
    return ExitSpec((1, 2), ExitRule(**{"theta": 0.2, "eps": 0.05, "k": 2, **rule}), min_layer, record=record)


def test_each_exit_parameter_is_declared_once_and_reaches_every_surface():
    """A field of ExitRule is a server flag, a checked per-call parameter, and a field of the spec on the wire."""
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    rule = ExitRule(theta=0.3, eps=0.02, k=3)
    spec = ExitSpec(choice_ids=(1, 2), rule=rule, min_layer=4)
    assert ExitSpec.from_dict(spec.to_dict()) == spec
    for name in ("theta", "eps", "k"):
        assert f"--rksc-cgee-{name}" in flags and name in CALL_PARAMS and name in spec.to_dict()
        with pytest.raises(ValueError, match=f"cgee.{name}"):
            parse({name: -5}, [1, 2], 30, ExitDefaults())
    assert verify("ok", choices=["a", "b"], gate=False, k=3).choices_method.exit_params == {"k": 3}
    with pytest.raises(ValueError, match="unknown parameters"):
        verify("ok", choices=["a", "b"], gate=False, choice_ids=[1, 2])


def _feed(row: RowExit, entropies: list[float]) -> int | None:
    for layer, h in enumerate(entropies, start=1):
        row.observe(layer, [1.0, 0.0], h)
    return row.exit_layer


def test_exit_rule_needs_low_and_stable_entropy_over_k_layers():
    # Low from layer 1, but checking starts at min_layer 3 and needs k+1 = 3 values there.
    assert _feed(RowExit(_spec()), [0.0] * 10) == 5
    # Stable but high: never.
    assert _feed(RowExit(_spec()), [0.5] * 10) is None
    # Low but moving by more than eps: only once it settles.
    assert _feed(RowExit(_spec()), [0.1, 0.1, 0.19, 0.01, 0.1, 0.1, 0.1, 0.1]) == 7
    assert _feed(RowExit(_spec(k=1, min_layer=1)), [0.1, 0.1]) == 2


def test_batch_settles_only_when_every_row_has():
    rows = [RowExit(_spec(min_layer=1, k=1)), RowExit(_spec(min_layer=1, k=1, theta=0.01))]
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    low = torch.tensor([0.1, 0.1])
    assert not update_rows(rows, 1, probs, low)
    assert not update_rows(rows, 2, probs, low)  # row 0 exits, row 1's entropy is above its theta
    assert rows[0].exit_layer == 2 and rows[1].exit_layer is None
    assert first_checked_layer([RowExit(_spec(min_layer=9)), RowExit(_spec(min_layer=4, record=True))]) == 1


def test_verdict_kernel_matches_a_direct_computation():
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 16), torch.randn(2, 16)
    probs, ent = verdict_step(hidden, weight)
    logits = hidden @ weight.t()
    expected = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(choice_distribution(hidden, weight), expected, atol=1e-6)
    manual = [-sum(p * math.log(p) for p in row) for row in expected.tolist()]
    assert torch.allclose(ent, torch.tensor(manual), atol=1e-5)
    assert entropy(torch.tensor([[0.5, 0.5]])).item() == pytest.approx(math.log(2))


def _top_logprobs(pairs: list[tuple[float, float]]) -> list[list[tuple[float, int, None]]]:
    return [[(math.log(a), 1, None), (math.log(b), 2, None)] for a, b in pairs]


def test_gate_decisions_on_recorded_logprobs():
    gate = Gate()
    confident = confidence_of(_top_logprobs([(0.9, 0.05), (0.8, 0.1)]))
    assert confident.top == pytest.approx(0.85) and gate.skips(confident)
    # Second rule: top >= 0.63 with a relative margin >= 0.08 (first rule fails on top).
    second = confidence_of(_top_logprobs([(0.65, 0.55)]))
    assert second.margin == pytest.approx(0.10) and gate.skips(second)
    # Top high but no margin: the two alternatives are near-ties.
    assert not gate.skips(confidence_of(_top_logprobs([(0.72, 0.70), (0.72, 0.70)])))
    assert not gate.skips(confidence_of(_top_logprobs([(0.6, 0.1)])))
    assert confidence_of([]) is None and confidence_of([[(-0.1, 1, None)]]) is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Gate(top=1.5)


def test_verify_arguments_are_checked_when_the_program_is_written():
    with pytest.raises(ValueError, match="candidate"):
        verify("ok", choices=["yes", "no"])  # the default gate needs a candidate
    with pytest.raises(ValueError, match="two non-empty"):
        verify("ok", choices=["yes"], gate=False)
    with pytest.raises(ValueError, match="accept"):
        verify("ok", choices=["yes", "no"], gate=False, accept=2)
    expr = verify("ok", candidate="a", choices=["yes", "no"], min_layer=5)
    assert expr.choices == ["yes", "no"] and expr.choices_method.exit_params == {"min_layer": 5}


def test_verify_is_a_plain_select_on_other_backends():
    method = verify("ok", choices=["yes", "no"], gate=False).choices_method
    decision = method(
        choices=["yes", "no"],
        normalized_prompt_logprobs=[-3.0, -1.0],
        input_token_logprobs=[[[-3.0, 7, " yes"]], [[-1.0, 8, " no"]]],
        output_token_logprobs=[[], []],
    )
    assert decision.decision == "no"
    assert decision.meta_info["cgee"] is False and decision.meta_info["score"] == pytest.approx(1 / (1 + math.exp(2.0)))


def test_choices_sharing_a_start_are_told_apart_after_it():
    words = {" 4": [5, 4], " 5": [5, 6], " yes": [7], " no": [8], " yes please": [7, 9]}
    assert resolve_choices({"choices": [" 4", " 5"]}, words.get, VOCAB) == ([4, 6], [5])
    assert resolve_choices({"choices": [" yes", " no"]}, words.get, VOCAB) == ([7, 8], [])
    with pytest.raises(ValueError, match="prefixes of one another"):
        resolve_choices({"choices": [" yes", " yes please"]}, words.get, VOCAB)


def test_offline_calibration_replays_the_servers_rule(tmp_path):
    import json

    from sglang_rksc.tools.cgee import calibrate as cgee_calibrate

    settled_no = [[0.5, 0.5]] * 3 + [[0.01, 0.99]] * 27  # settles on "no" at layer 4
    flips = [[0.001, 0.999]] * 20 + [[0.999, 0.001]] * 10  # confident "no" early, "yes" at full depth
    calls = [
        {"verdict": "no", "full_verdict": "no", "profile": settled_no, "confidence": {"top": 0.9, "margin": 0.8}},
        {"verdict": "no", "full_verdict": "yes", "profile": flips, "confidence": {"top": 0.5, "margin": 0.1}},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"verifications": calls}) + "\n")
    loaded = cgee_calibrate.load_calls([path])
    assert cgee_calibrate.replay_exit([settled_no, flips], min_layer=2, theta=0.1, eps=0.05, k=2) == [(6, 1), (4, 1)]
    (early, late) = cgee_calibrate.sweep_exit(loaded, {"min_layer": [2, 21], "theta": [0.1], "eps": [0.05], "k": [2]})
    assert (early.disagreements, early.mean_layers) == (1, 5.0)
    assert (late.disagreements, late.mean_layers) == (0, (23 + 23) / 2)
    assert cgee_calibrate.gate_outcomes(loaded, Gate(), "yes") == (2, 1, 1)
    # Answering the commonest full-depth verdict every time: here a tie, broken by the verdict's name.
    assert cgee_calibrate.majority_baseline(loaded) == ("no", 2, 1)
    assert cgee_calibrate.majority_baseline([*loaded, {"full_verdict": "yes"}]) == ("yes", 3, 1)
    assert cgee_calibrate.majority_baseline([{"full_verdict": None}]) == (None, 0, 0)
    assert cgee_calibrate.main([str(path), "--min-layer", "2,21", "--theta", "0.1", "--eps", "0.05", "--k", "2"]) == 0


def test_every_hook_target_exists_in_the_pinned_sglang():
    """A renamed SGLang function would silently leave a hook unapplied; resolve every target."""
    import importlib

    from sglang_rksc.srt import seams

    for target in [seam.target for seam in seams.SEAMS if seam.kind != seams.EVICTION_TABLE]:
        parts = target.split(".")
        # The longest importable prefix is the module; the rest are attributes (a class and its method, or a function).
        cut = 1
        while cut < len(parts) and _is_module(".".join(parts[: cut + 1])):
            cut += 1
        obj = importlib.import_module(".".join(parts[:cut]))
        for name in parts[cut:]:
            obj = getattr(obj, name)
        assert callable(obj), target


def _is_module(dotted: str) -> bool:
    import importlib

    try:
        importlib.import_module(dotted)
    except ImportError:
        return False
    return True
