"""The checks at the door, without a server: options schema, prompts, batch shapes, the fault spec."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_rksc.exit.spec import check_call_params, resolve_choices
from sglang_rksc.srt.batch_failures import parse_fault
from sglang_rksc.srt.request_checks import normalize_request, prompt_error, scheduler_prompt_error, validate_request
from sglang_rksc.wire import check_custom_params, request_options

VOCAB = 100


@pytest.mark.parametrize(
    "custom, message",
    [
        ([1, 2], "custom_params must be an object"),
        ({"rksc": "yes"}, r"custom_params\.rksc must be an object"),
        ({"rksc": {"bogus": 1}}, "unknown option 'bogus'"),
        ({"rksc": {"mark": "evil"}}, r"rksc\.mark must be one of"),
        ({"rksc": {"mark": [1]}}, r"rksc\.mark must be one of"),
        ({"rksc": {"reuse": "no"}}, r"rksc\.reuse must be true or false"),
        ({"rksc": {"semantic": 0}}, r"rksc\.semantic must be true or false"),
        ({"rksc": {"adapter": "off"}}, r"rksc\.adapter must be true or false"),
        ({"rksc": {"cgee": None}}, r"rksc\.cgee must be an object"),
    ],
)
def test_bad_options_are_refused_naming_the_key(custom, message):
    with pytest.raises(ValueError, match=message):
        check_custom_params(custom)


def test_good_options_pass_and_are_read():
    for custom in (None, {}, {"other": [1]}, {"rksc": {}}, {"rksc": {"mark": "finished", "reuse": False}}):
        check_custom_params(custom)
    req = SimpleNamespace(sampling_params=SimpleNamespace(custom_params={"rksc": {"fork": False}}))
    assert request_options(req) == {"fork": False}
    # What the door refuses still reads as no options in the scheduler (second line of defence).
    for custom in ([1], "x", {"rksc": "yes"}):
        assert request_options(SimpleNamespace(sampling_params=SimpleNamespace(custom_params=custom))) == {}


def test_prompts_must_have_tokens_inside_the_vocabulary():
    assert prompt_error([0, 5, VOCAB - 1], VOCAB) is None
    assert prompt_error(None, VOCAB) is None  # input_embeds
    assert "empty" in prompt_error([], VOCAB)
    assert prompt_error([3, VOCAB], VOCAB) == f"prompt token 1 is {VOCAB}, outside the vocabulary [0, {VOCAB})"
    assert prompt_error([-1, 3], VOCAB) == f"prompt token 0 is -1, outside the vocabulary [0, {VOCAB})"
    assert prompt_error([10**12], None) is None  # no vocabulary known: only emptiness is checked


def _manager() -> SimpleNamespace:
    return SimpleNamespace(model_config=SimpleNamespace(vocab_size=VOCAB, num_hidden_layers=4), tokenizer=None)


def _request(**fields) -> SimpleNamespace:
    base = {"sampling_params": {"max_new_tokens": 2}, "input_embeds": None, "return_logprob": False}
    return SimpleNamespace(**{**base, **fields})


def _validate(obj, input_ids):
    seen = []
    validate_request(lambda manager, o, ids: seen.append(list(ids)), _manager(), obj, input_ids)
    return seen


def test_the_door_checks_types_before_sglang_and_the_prompt_after():
    assert _validate(_request(), [1, 2]) == [[1, 2]]
    with pytest.raises(ValueError, match="sampling_params must be an object"):
        _validate(_request(sampling_params=[{}]), [1])
    with pytest.raises(ValueError, match="empty"):
        _validate(_request(), [])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _validate(_request(), [1, VOCAB + 5])
    with pytest.raises(ValueError, match="top_logprobs_num"):
        _validate(_request(return_logprob=True, top_logprobs_num=VOCAB + 1), [1])
    with pytest.raises(ValueError, match="stop_regex"):
        _validate(_request(sampling_params={"stop_regex": ["a+", "("]}), [1])
    # A verification's resolved prefix is part of the prompt the scheduler runs: checked too.
    bad_prefix = {
        "max_new_tokens": 1,
        "custom_params": {"rksc": {"cgee": {"choice_ids": [1, 2], "prefix_ids": [VOCAB]}}},
    }
    with pytest.raises(ValueError, match="prefix_ids"):
        _validate(_request(sampling_params=bad_prefix), [1])


def test_the_scheduler_refuses_what_reached_it_by_another_road():
    req = SimpleNamespace(origin_input_ids=[], vocab_size=VOCAB, input_embeds=None)
    assert "empty" in scheduler_prompt_error(None, req, 100, False)
    req.origin_input_ids = [VOCAB]
    assert "outside the vocabulary" in scheduler_prompt_error(None, req, 100, False)
    assert scheduler_prompt_error("too long", req, 100, False) == "too long"  # SGLang's own verdict stands
    req.origin_input_ids = [1, 2]
    assert scheduler_prompt_error(None, req, 100, False) is None


def test_batches_need_one_argument_per_prompt():
    from sglang.srt.managers.io_struct import GenerateReqInput

    def normalize(**fields):
        obj = GenerateReqInput(**fields)
        normalize_request(GenerateReqInput.normalize_batch_and_arguments, obj)
        return obj

    assert normalize(text=["a", "b"], sampling_params=[{}, {}]).batch_size == 2
    assert normalize(text=["a", "b"], sampling_params={"max_new_tokens": 1}).batch_size == 2
    with pytest.raises(ValueError, match="empty list"):
        normalize(text=["a", "b"], sampling_params=[])
    with pytest.raises(ValueError, match=r"sampling_params\[1\] must be an object"):
        normalize(text=["a", "b"], sampling_params=[{}, 3])
    with pytest.raises(ValueError, match="sampling_params has 1 element"):
        normalize(text=["a", "b", "c"], sampling_params=[{}])
    with pytest.raises(ValueError, match="return_logprob has 1 element"):
        normalize(text=["a", "b"], return_logprob=[True])
    # n below 1 left fewer request ids than prompts (HTTP 500 in SGLang); n = 2 doubles them.
    assert len(normalize(text=["a", "b"], sampling_params={"n": 2}).rid) == 4
    for bad in ({"n": 0}, [{"n": -1}, {"n": -1}], {"n": "2"}, {"n": True}):
        with pytest.raises(ValueError, match=r"sampling_params.n \(samples per prompt\) must be a whole number"):
            normalize(text=["a", "b"], sampling_params=bad)
    with pytest.raises(ValueError, match="sampling_params.n"):
        normalize(text="a", sampling_params={"n": 0})


def test_cgee_call_parameters_without_a_model():
    check_call_params({"theta": 0.1, "k": 2, "min_layer": 3, "early_exit": False})
    for bad, message in [({"k": 0}, "k must be"), ({"min_layer": True}, "min_layer"), ({"theta": "x"}, "theta")]:
        with pytest.raises(ValueError, match=message):
            check_call_params(bad)
    with pytest.raises(ValueError, match="prefix_ids"):
        resolve_choices({"choice_ids": [1, 2], "prefix_ids": [-1]}, None, VOCAB)


def test_fault_injection_spec():
    assert parse_fault(None) == [] and parse_fault("") == []
    assert parse_fault("a-:prefill,b:c-:decode") == [("a-", "prefill"), ("b:c-", "decode")]
    for bad in ("a-", ":prefill", "a-:sample"):
        with pytest.raises(ValueError, match="SGLANG_RKSC_INJECT_FAULT"):
            parse_fault(bad)
