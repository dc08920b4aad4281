"""The GPU projection: a run's token accounting costed with a measured table, checked by hand."""

from __future__ import annotations

import json

import pytest

from sglang_rksc.runtime import cost_model
from sglang_rksc.runtime.cost_model import CostModelError

# A small table: 1 row 10 ms, 3 rows 16 ms, 5 rows 20 ms; 2 tokens per row at 1 row: 12 ms; prefill 1000 tok/s.
SMALL = {
    "decode_step": {"1": {"step_ms": 10.0}, "3": {"step_ms": 16.0}, "5": {"step_ms": 20.0}, "1x2": {"step_ms": 12.0}},
    "prefill": {"1x512": {"tok_per_s": 900.0}, "8x512": {"tok_per_s": 1000.0}, "16x512": {"tok_per_s": 1100.0}},
}


def test_the_projection_equals_a_hand_computation_on_a_step_log():
    model = cost_model.parse(SMALL, "small")
    # A recorded run: decode steps by batch size, and prompt tokens computed.
    steps = {1: 4, 2: 3, 3: 2, 7: 1}
    by_hand_ms = 4 * 10.0 + 3 * 13.0 + 2 * 16.0 + 1 * 24.0  # 2 rows: halfway 1-3; 7 rows: the 3-5 line extended
    prefill_ms = 1000.0 * 2500 / 1000.0  # the median measured rate
    projected = model.project(steps, 2500)
    assert projected["projected_decode_s"] == pytest.approx(by_hand_ms / 1000)
    assert projected["projected_prefill_s"] == pytest.approx(prefill_ms / 1000)
    assert projected["projected_s"] == pytest.approx((by_hand_ms + prefill_ms) / 1000)
    assert model.step_ms(1, 2) == 12.0 and model.step_ms(1, 3) == pytest.approx(14.0)  # tokens per row
    assert model.project({}, 0)["projected_s"] == 0.0


def test_the_default_model_is_the_h100_measurement():
    model = cost_model.load()
    assert model.step_ms(1) == pytest.approx(6.614) and model.step_ms(64) == pytest.approx(8.905)
    assert 6.614 < model.step_ms(16, 4) and model.step_ms(16, 4) == pytest.approx(9.133)
    assert 33_000 < model.prefill_tokens_per_s < 40_000


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"prefill": SMALL["prefill"]}, "no decode_step table"),
        ({**SMALL, "decode_step": {"1": {"step_ms": 0}}}, "positive number"),
        ({**SMALL, "decode_step": {"1": {"step_ms": -3}}}, "positive number"),
        ({**SMALL, "decode_step": {"1": {}}}, "positive number"),
        ({**SMALL, "decode_step": {"4x2": {"step_ms": 5.0}}}, "one-token-per-row"),
        ({**SMALL, "decode_step": {"one": {"step_ms": 5.0}}}, "not N or NxT"),
        ({"decode_step": SMALL["decode_step"]}, "no prefill table"),
        ({**SMALL, "prefill": {"1x512": {"tok_per_s": 0}}}, "positive number"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_a_broken_cost_model_is_a_clear_error(tmp_path, broken, message):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(CostModelError, match=message):
        cost_model.load(path)


def test_a_missing_or_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(CostModelError, match="No such file"):
        cost_model.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CostModelError, match="not JSON"):
        cost_model.load(tmp_path / "bad.json")


def test_drafts_steps_are_costed_at_their_shapes():
    model = cost_model.load()
    # A 4-row verify step checking 8 tokens a row costs the table's 4x8 step, not 4 rows of 1 token.
    assert model.project_shapes({(4, 8): 1}, 0)["projected_decode_s"] == pytest.approx(7.644 / 1000)
    assert model.project_shapes({(4, 8): 3, (1, 1): 2}, 0)["projected_decode_s"] == pytest.approx(
        (3 * 7.644 + 2 * 6.614) / 1000
    )
    small = cost_model.parse(SMALL, "small")
    # `project` is `project_shapes` at one token per row (or the width given).
    steps = {1: 4, 2: 3, 3: 2, 7: 1}
    assert small.project(steps, 2500) == small.project_shapes({(b, 1): n for b, n in steps.items()}, 2500)
    assert small.project({1: 2}, 0, tokens_per_row=2)["projected_decode_s"] == pytest.approx(2 * 12.0 / 1000)
