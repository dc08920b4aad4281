"""Merging near-duplicate branches, without a server: the span vector codec, the grouping, the checks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sglang_rksc.cache import span_vector
from sglang_rksc.cache.embeddings import SlotStates
from sglang_rksc.lang import merge
from sglang_rksc.lang.merge import BranchGroups, group_by_similarity, merge_branches
from sglang_rksc.programs.gsm8k import extract_answer


def _unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def test_the_vector_round_trip_keeps_the_caches_similarity():
    torch.manual_seed(0)
    for layers in (1, 3):
        states = SlotStates(16, 8, num_layers=layers, dtype=torch.float32)
        for layer in range(layers) if layers > 1 else [None]:
            states.write(torch.arange(16), torch.randn(16, 8), layer=layer)
        a = states.span_embedding(torch.tensor([1, 2, 3, 4]))
        b = states.span_embedding(torch.tensor([3, 4, 5, 9]))
        _, cache_sim = states.best(a, [b])
        va = span_vector.decode(span_vector.encode(a, states.weights, tokens=4))
        vb = span_vector.decode(span_vector.encode(b, states.weights, tokens=4))
        assert len(va) == 8 * layers
        assert span_vector.similarity(va, vb) == pytest.approx(cache_sim, abs=2e-3)  # float16 on the wire
        assert span_vector.similarity(va, va) == pytest.approx(1.0, abs=2e-3)


def test_bad_vectors_are_refused():
    good = span_vector.encode(torch.tensor([0.6, 0.8]), tokens=2)
    assert good["tokens"] == 2 and good["dtype"] == "float16"
    for bad in (
        {**good, "dtype": "float32"},
        {**good, "vector": 5},
        {"vector": "AAA="},
        "x",
        {**good, "vector": "AAAA"},
    ):
        with pytest.raises(ValueError):
            span_vector.decode(bad)
    with pytest.raises(ValueError, match="different sizes"):
        span_vector.similarity([1.0], [1.0, 0.0])


def test_grouping_joins_the_most_similar_representative_only_at_the_threshold():
    a, a2, b = _unit(1, 0.05, 0), _unit(1, 0.1, 0), _unit(0, 0, 1)
    groups, sims = group_by_similarity([a, b, a2, None, list(a)], 0.99)
    assert groups == [[0, 2, 4], [1], [3]]  # None is always alone
    assert sims[2] == pytest.approx(sum(x * y for x, y in zip(a, a2, strict=True))) and sims[1] == 1.0
    # Near 1, only the exact copy joins.
    assert group_by_similarity([a, a2, list(a)], 0.9999)[0] == [[0, 2], [1]]
    # A member compares with representatives, not with other members (no chaining).
    c0, c1, c2 = _unit(1, 0, 0), _unit(1, 0.6, 0), _unit(1, 1.3, 0)
    assert group_by_similarity([c0, c1, c2], 0.85)[0] == [[0, 1], [2]]
    # The most similar representative wins, not the first one above the threshold.
    r0, r1, x = _unit(1, 0, 0), _unit(0, 1, 0), _unit(0.6, 0.8, 0)
    assert group_by_similarity([r0, r1, x], 0.5)[0] == [[0], [1, 2]]
    assert group_by_similarity([r0, r1, x], -1.0)[0] == [[0, 1, 2]]


@pytest.mark.parametrize("threshold", [1.01, -1.5, float("nan"), "0.9", True, None])
def test_a_threshold_outside_its_range_is_an_error(threshold):
    with pytest.raises(ValueError, match="merge threshold"):
        group_by_similarity([[1.0]], threshold)
    with pytest.raises(ValueError, match="merge threshold"):
        merge_branches([_state({"a": {}})], "a", threshold)


def test_groups_hand_their_representatives_results_to_the_members():
    groups = BranchGroups(("s0", "s1", "s2", "s3"), ((0, 2), (1,), (3,)), (1.0, 1.0, 0.97, 1.0))
    assert groups.representatives == ["s0", "s1", "s3"] and groups.sizes == [2, 1, 1]
    assert sum(groups.sizes) == 4 and groups.merged == 1
    assert groups.expand(["x", "y", "z"]) == ["x", "y", "x", "z"]
    with pytest.raises(ValueError, match="one per group"):
        groups.expand(["x", "y"])
    with pytest.raises(AssertionError):
        BranchGroups(("s0", "s1"), ((0,), (0, 1)), (1.0, 1.0))


class _Executor:
    def __init__(self, meta: dict, forked: bool) -> None:
        self.meta_info = meta
        self.fork_start_text_pos = 10 if forked else None
        self.backend = SimpleNamespace(base_url="http://stock:1")


class _State(SimpleNamespace):
    """A fork's state: its generations' meta_info, and their texts as `state[var]` reads them."""

    def __getitem__(self, var: str) -> str:
        return self.texts[var]


def _state(meta: dict, forked: bool = True, texts: dict | None = None) -> _State:
    executor = _Executor(meta, forked)
    return _State(stream_executor=executor, get_meta_info=executor.meta_info.get, texts=texts or {})


def _span(*values: float) -> dict:
    return {span_vector.META_KEY: [span_vector.encode(torch.tensor(_unit(*values)), tokens=5)]}


def test_merge_groups_by_the_servers_span_vectors():
    states = [_state({"plan": _span(1, 0.02)}), _state({"plan": _span(0, 1)}), _state({"plan": _span(1, 0)})]
    groups = merge_branches(states, "plan", 0.95)
    assert groups.groups == ((0, 2), (1,)) and groups.note is None
    assert groups.representatives == [states[0], states[1]] and groups.sizes == [2, 1]


def test_with_same_only_branches_whose_texts_agree_are_merged():
    texts = ["so the answer is 4.", "so the answer is 5.", "so the answer is 4."]
    spans = [_span(1, 0.02), _span(1, 0.01), _span(1, 0)]  # near-identical spans, different numbers
    states = [_state({"solution": span}, texts={"solution": text}) for text, span in zip(texts, spans, strict=True)]
    assert merge_branches(states, "solution", 0.95).groups == ((0, 1, 2),)
    guarded = merge_branches(states, "solution", 0.95, same=extract_answer)
    assert guarded.groups == ((0, 2), (1,)) and guarded.sizes == [2, 1]
    # The key is compared with the representative's, and keys must be one per branch.
    assert group_by_similarity([_unit(1, 0), _unit(1, 0), _unit(1, 0)], 0.9, ["a", "b", "a"])[0] == [[0, 2], [1]]
    with pytest.raises(ValueError, match="one per branch"):
        group_by_similarity([_unit(1, 0)], 0.9, ["a", "b"])


def test_without_span_vectors_nothing_is_merged_and_the_note_says_why(caplog):
    merge._warned.clear()
    states = [_state({"plan": {"id": "a", "text": "same"}}), _state({"plan": {"id": "b", "text": "same"}})]
    with caplog.at_level("WARNING"):
        groups = merge_branches(states, "plan", 0.0)
        merge_branches(states, "plan", 0.0)
    assert groups.groups == ((0,), (1,)) and groups.sizes == [1, 1] and groups.merged == 0
    assert "no span embeddings" in groups.note and "--rksc-span-embeddings on" in groups.note
    assert sum("no span embeddings" in r.message for r in caplog.records) == 1  # once per server


def test_merge_takes_only_the_states_of_a_fork():
    forked = _state({"plan": _span(1, 0)})
    with pytest.raises(ValueError, match="not one state"):
        merge_branches(forked, "plan", 0.9)
    with pytest.raises(ValueError, match="not a forked state"):
        merge_branches([forked, _state({"plan": _span(1, 0)}, forked=False)], "plan", 0.9)
    with pytest.raises(ValueError, match="non-empty"):
        merge_branches([], "plan", 0.9)
    with pytest.raises(ValueError, match="not a program state"):
        merge_branches(["text"], "plan", 0.9)
    with pytest.raises(ValueError, match="no generation named 'answer'"):
        merge_branches([forked], "answer", 0.9)
