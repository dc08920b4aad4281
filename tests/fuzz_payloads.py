"""Hypothesis strategies for what a client can send the server: `/generate` bodies, `/set_internal_state`
bodies, and the arguments of the frontend primitives.

Values sit at and beyond every bound on purpose; generations stay short (a few tokens, at most three
samples) so that a few hundred payloads run in minutes on a 2-core CPU.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

I64_MAX = 2**63 - 1


def edge_ids(vocab: int) -> st.SearchStrategy[int]:
    """Token ids: mostly valid, often at or past either end of the vocabulary or of int64."""
    return st.one_of(
        st.integers(0, vocab - 1),
        st.sampled_from([0, vocab - 1, vocab, vocab + 1, -1, -(2**31), 10**9, I64_MAX, -(2**63), 2**64]),
    )


def texts() -> st.SearchStrategy[str]:
    control = st.text(st.characters(max_codepoint=0x1F) | st.sampled_from(" \t\n\r\x7f\u200b\ufeff\u2028"), max_size=6)
    return st.one_of(
        st.sampled_from(["", " ", "\n\n", "\t", "\x00", "Hi", "What is 7 times 8?", "<|im_start|>user\nHi<|im_end|>"]),
        control,
        st.text(max_size=40),
    )


def prompts(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    """The prompt part of a body: one text or id list, a batch of them, or none at all."""
    ids = st.lists(edge_ids(vocab), max_size=16)
    return st.one_of(
        st.builds(lambda t: {"text": t}, texts()),
        st.builds(lambda i: {"input_ids": i}, ids),
        st.builds(lambda ts: {"text": ts}, st.lists(texts(), max_size=3)),
        st.builds(
            lambda ls: {"input_ids": ls}, st.lists(st.lists(edge_ids(vocab), max_size=6), min_size=1, max_size=3)
        ),
        st.sampled_from(
            [
                {},
                {"text": "Hi", "input_ids": [5, 6]},
                {"input_ids": [5] * 40_000},  # past the context length
                {"text": "one two three " * 300},  # long but allowed
                {"input_embeds": [[0.1] * 8]},
            ]
        ),
    )


def _junk() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text(max_size=4), st.just([1]), st.just({"a": 1}))


def cgee_specs(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    numbers = st.one_of(st.sampled_from([-1.0, 0.0, 0.05, 0.1, 100.0, 101.0, 1e308]), _junk())
    return st.fixed_dictionaries(
        {},
        optional={
            "choices": st.one_of(
                st.lists(st.sampled_from([" yes", " no", "", "yes", " 4", " 5", " 45"]), max_size=4), _junk()
            ),
            "choice_ids": st.one_of(st.lists(edge_ids(vocab), max_size=3), _junk()),
            "prefix_ids": st.one_of(st.lists(edge_ids(vocab), max_size=2), _junk()),
            "theta": numbers,
            "eps": numbers,
            "k": st.one_of(st.sampled_from([-1, 0, 1, 2, 29, 30, 31, 10**9]), _junk()),
            "min_layer": st.one_of(st.sampled_from([-1, 0, 1, 26, 30, 31, 10**9]), _junk()),
            "early_exit": _junk(),
            "record": _junk(),
            "bogus": _junk(),
        },
    )


def rksc_options(vocab: int) -> st.SearchStrategy[Any]:
    value = st.one_of(_junk(), st.sampled_from(["finished", "rejected", "evil", ""]), cgee_specs(vocab))
    keys = st.sampled_from(["semantic", "fork", "reuse", "mark", "cgee", "bogus", "", "Semantic"])
    return st.one_of(st.dictionaries(keys, value, max_size=3), _junk())


def custom_params(vocab: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.sampled_from([[1, 2], "x", 5]),
        st.fixed_dictionaries({}, optional={"rksc": rksc_options(vocab), "other": _junk()}),
    )


def sampling_params(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    penalties = st.sampled_from([-3.0, -2.0, 0.0, 2.0, 3.0])
    return st.fixed_dictionaries(
        {},
        optional={
            "max_new_tokens": st.sampled_from([-5, -1, 0, 1, 2, 3, 8, 10**12, I64_MAX, 2**64, 1.5, "8", None]),
            "min_new_tokens": st.sampled_from([-1, 0, 1, 4, 100]),
            "temperature": st.sampled_from([-1.0, 0.0, 1e-30, 0.7, 1.0, 2.0, 1e30, "hot"]),
            "top_p": st.sampled_from([-0.1, 0.0, 1e-9, 0.5, 1.0, 3.0]),
            "top_k": st.sampled_from([-2, -1, 0, 1, 5, vocab, vocab + 1, 10**9]),
            "min_p": st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]),
            "frequency_penalty": penalties,
            "presence_penalty": penalties,
            "repetition_penalty": st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0]),
            "stop": st.sampled_from(["", "\n", ".", ["a", ""], [1], None, ["x"] * 50]),
            "stop_token_ids": st.one_of(st.lists(edge_ids(vocab), max_size=3), st.just("x")),
            "stop_regex": st.sampled_from(["(", "a+", ["[", "b"], [1], ""]),
            "ignore_eos": _junk(),
            "skip_special_tokens": _junk(),
            "n": st.sampled_from([-1, 0, 1, 2, 3, "2"]),
            "sampling_seed": st.sampled_from([-1, 0, 42, I64_MAX, 2**64]),
            "logit_bias": st.one_of(
                st.dictionaries(
                    st.sampled_from(["0", "1", "-5", str(vocab), "abc", ""]),
                    st.sampled_from([1.0, -100.0, 1e30, "x"]),
                    max_size=2,
                ),
                st.just([1]),
            ),
            "regex": st.sampled_from(["a+", "(", "[0-9]{2}"]),
            "json_schema": st.sampled_from(['{"type": "object"}', "not json", "{}"]),
            "ebnf": st.sampled_from(['root ::= "a"', "root ::= ("]),
            "no_stop_trim": _junk(),
            "custom_params": custom_params(vocab),
        },
    )


def request_fields(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "return_logprob": st.one_of(st.booleans(), st.just([True])),
            "logprob_start_len": st.sampled_from([-5, -1, 0, 1, 10**6]),
            "top_logprobs_num": st.sampled_from([-1, 0, 2, vocab, vocab + 1, 10**6]),
            "token_ids_logprob": st.lists(edge_ids(vocab), max_size=2),
            "return_text_in_logprobs": st.booleans(),
            "stream": st.booleans(),
            "rid": st.sampled_from(["", "fuzz-rid", "a/b", ["x", "x"]]),
            "return_hidden_states": st.booleans(),
            "lora_path": st.just("nope"),
            "custom_logit_processor": st.just("garbage"),
            "session_params": st.just({"id": "nope"}),
            "extra_key": st.sampled_from(["tenant-a", "", 5]),
            "cache_salt": st.sampled_from(["salt", ""]),
        },
    )


def valid_bodies(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies within every bound (short greedy or sampled generations), so that good requests share
    batches and the cache with the bad ones."""
    params = st.fixed_dictionaries(
        {"max_new_tokens": st.integers(0, 8)},
        optional={
            "temperature": st.sampled_from([0.0, 0.7, 1.0]),
            "top_p": st.sampled_from([0.5, 1.0]),
            "top_k": st.sampled_from([-1, 1, 20]),
            "n": st.integers(1, 3),
            "ignore_eos": st.booleans(),
            "stop": st.sampled_from(["\n", ["."]]),
            "sampling_seed": st.integers(0, 100),
            "custom_params": st.fixed_dictionaries(
                {},
                optional={
                    "rksc": st.fixed_dictionaries(
                        {},
                        optional={
                            "semantic": st.booleans(),
                            "fork": st.booleans(),
                            "reuse": st.booleans(),
                            "mark": st.sampled_from(["finished", "rejected"]),
                        },
                    )
                },
            ),
        },
    )
    prompt = st.one_of(
        st.builds(lambda t: {"text": t}, st.sampled_from(["Hi", "What is 7 times 8?", "Name a colour.", "2 + 2 ="])),
        st.builds(lambda i: {"input_ids": i}, st.lists(st.integers(0, vocab - 1), min_size=1, max_size=12)),
    )
    fields = st.fixed_dictionaries(
        {},
        optional={
            "return_logprob": st.booleans(),
            "top_logprobs_num": st.integers(0, 3),
            "stream": st.booleans(),
            "cache_salt": st.sampled_from(["tenant-a", "tenant-b"]),
        },
    )
    return st.builds(lambda p, sp, f: {**p, "sampling_params": sp, **f}, prompt, params, fields)


def generate_bodies(vocab: int) -> st.SearchStrategy[dict[str, Any]]:
    """A `/generate` body: a prompt, sampling parameters (one, or a list for a batch), request fields."""
    plain = st.builds(
        lambda prompt, params, fields: {**prompt, "sampling_params": params, **fields},
        prompts(vocab),
        st.one_of(sampling_params(vocab), st.lists(sampling_params(vocab), max_size=4), st.none()),
        request_fields(vocab),
    )
    # A verification: one token, a CGEE spec, mangled.
    verification = st.builds(
        lambda text, spec, fields: {
            "text": text,
            "sampling_params": {"max_new_tokens": 1, "custom_params": {"rksc": {"cgee": spec}}},
            **fields,
        },
        texts(),
        cgee_specs(vocab),
        request_fields(vocab),
    )
    return st.one_of(valid_bodies(vocab), plain, verification)


def internal_state_bodies() -> st.SearchStrategy[Any]:
    """`/set_internal_state` bodies around our `rksc_mark/<mark>/<rid>` keys (SGLang's own knobs left out)."""
    mark_keys = st.builds(
        lambda mark, rid: f"rksc_mark/{mark}/{rid}",
        st.sampled_from(["finished", "rejected", "evil", ""]),
        st.one_of(st.text(max_size=8), st.just("a/b")),
    )
    keys = st.one_of(mark_keys, st.sampled_from(["rksc_mark", "rksc_mark/", "rksc_mark//"]), st.text(max_size=10))
    values = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), _junk())
    return st.one_of(
        st.fixed_dictionaries({"server_args": st.dictionaries(keys, values, max_size=4)}),
        st.sampled_from([{}, {"server_args": []}, {"server_args": None}, [], "x", {"other": 1}]),
    )
