"""Span embeddings, the similarity kernels' torch reference, capture layer choice, and the flags."""

from __future__ import annotations

import json

import pytest
import torch

from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.config import ConfigError, RkscConfig, split_args
from sglang_rksc.kernels import similarity
from sglang_rksc.srt import capture


def test_layer_weights_follow_rksc():
    w = similarity.layer_weights(4)
    expected = torch.exp(torch.linspace(0, 1.5, 4))
    assert torch.allclose(w, expected / expected.sum()) and w[-1] > w[0]


def test_mean_pool_and_cosines_against_a_direct_computation():
    states = torch.randn(10, 8)
    slots = torch.tensor([2, 5, 7])
    center = torch.randn(8)
    pooled = similarity.mean_pool(states, slots, center)
    direct = states[[2, 5, 7]].mean(0) - center
    assert torch.allclose(pooled, direct / direct.norm(), atol=1e-6)
    cands = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    assert torch.allclose(similarity.cosines(pooled, cands), cands @ pooled, atol=1e-6)
    idx, score = similarity.best_match(pooled, torch.stack([cands[0], pooled, cands[2]]))
    assert idx == 1 and score == pytest.approx(1.0)
    assert similarity.best_match(pooled, torch.empty(0, 8)) == (-1, float("-inf"))


def test_layered_cosines_weight_deeper_layers():
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    agree_deep = torch.stack([-q[0], -q[1], q[2]])  # only the deepest layer agrees
    agree_shallow = torch.stack([q[0], -q[1], -q[2]])  # only the first does
    scores = similarity.cosines(q, torch.stack([agree_deep, agree_shallow]))
    assert scores[0] > scores[1]


def test_slot_states_need_every_slot_written_and_centre_by_the_running_mean():
    states = SlotStates(8, 4, dtype=torch.float32)
    states.write(torch.tensor([1, 2]), torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0]]))
    assert states.span_embedding(torch.tensor([1, 3])) is None  # slot 3 has no state
    assert torch.allclose(states.center(), torch.tensor([2.0, 0, 0, 0]))
    emb = states.span_embedding(torch.tensor([2]))
    assert torch.allclose(emb, torch.tensor([1.0, 0, 0, 0]))  # (3 - 2) normalised


def test_layered_slot_states_are_complete_after_the_last_layer():
    states = SlotStates(4, 2, num_layers=2, dtype=torch.float32)
    states.write(torch.tensor([1]), torch.tensor([[1.0, 0.0]]), layer=0)
    assert states.span_embedding(torch.tensor([1])) is None
    states.write(torch.tensor([1]), torch.tensor([[0.0, 1.0]]), layer=1)
    assert states.span_embedding(torch.tensor([1])).shape == (2, 2)


def test_token_probe_is_unit_norm_and_centred():
    weight = torch.randn(50, 6)
    probe = TokenProbe(weight)
    emb = probe.embed([1, 2, 3])
    direct = weight[[1, 2, 3]].mean(0) - weight.mean(0)
    assert torch.allclose(emb, direct / direct.norm(), atol=1e-6)


def test_pooled_layers_spread_over_the_upper_half():
    assert capture.pooled_layer_indices(30, 4) == [15, 20, 24, 29]
    assert capture.pooled_layer_indices(30, 1) == [29]
    assert capture.pooled_layer_indices(2, 5) == [1]


def test_flags_split_validate_and_travel_as_json():
    rest, cfg = split_args(["--port", "1", "--rksc-semantic", "on", "--rksc-threshold=0.9", "--rksc-probe", "off"])
    assert rest == ["--port", "1"]
    assert cfg.semantic.on and cfg.semantic.threshold == 0.9 and not cfg.semantic.probe
    assert RkscConfig.from_env({"SGLANG_RKSC_CONFIG": cfg.to_env()}) == cfg
    assert RkscConfig.from_env({}) == RkscConfig()
    for bad, message in [
        (["--rksc-threshold", "2"], "--rksc-threshold must be in [-1, 1]"),
        (["--rksc-min-span", "0"], "at least 1"),
        (["--rksc-length-ratio", "0.5"], "at least 1"),
        (["--rksc-pooling", "max"], "one of last, layers"),
        (["--rksc-semantic", "maybe"], "expected on or off"),
        (["--rksc-nonsense", "1"], "unrecognized"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            split_args(bad)
    with pytest.raises(ConfigError, match="unknown settings"):
        RkscConfig.from_env({"SGLANG_RKSC_CONFIG": json.dumps({"tau": 1})})
