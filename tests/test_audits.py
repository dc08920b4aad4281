"""Audits (`--rksc-audit-rate`): what is recorded, that nothing a client gets changes, and the replay's figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import requests
import torch

from sglang_rksc import config
from sglang_rksc.audits.recorder import sampled, spread
from sglang_rksc.srt.launcher import plan_launch
from sglang_rksc.tools.audits import replay
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache
from tests.test_launcher import isolated_runtime  # noqa: F401  (a fixture)


def test_the_draw_depends_on_the_request_id_only_and_follows_the_rate():
    ids = [f"req-{i}" for i in range(4000)]
    share = sum(sampled(rid, 0.25) for rid in ids) / len(ids)
    assert 0.22 < share < 0.28
    assert [sampled(rid, 0.25) for rid in ids[:50]] == [sampled(rid, 0.25) for rid in ids[:50]]
    assert not any(sampled(rid, 0.0) for rid in ids) and all(sampled(rid, 1.0) for rid in ids)


def test_positions_are_spread_from_first_to_last():
    assert spread(list(range(10)), 32) == list(range(10))
    assert spread(list(range(100)), 5) == [0, 25, 50, 74, 99]
    assert spread(list(range(7)), 1) == [0]


def test_the_coarse_kl_is_zero_on_agreement_and_never_above_the_full_kl():
    torch.manual_seed(0)
    p = torch.log_softmax(torch.randn(50), dim=-1)
    top = torch.topk(p, 5)
    assert replay.coarse_kl(top.indices.tolist(), top.values.tolist(), p) == pytest.approx(0.0, abs=1e-9)
    q = torch.log_softmax(torch.randn(50), dim=-1)
    q_top = torch.topk(q, 5)
    coarse = replay.coarse_kl(q_top.indices.tolist(), q_top.values.tolist(), p)
    full = float((q.exp() * (q - p)).sum())
    assert 0.0 < coarse <= full + 1e-9


def test_a_wrong_audit_rate_is_refused_in_one_line(isolated_runtime):  # noqa: F811
    for value in ("1.5", "-0.1", "often"):
        with pytest.raises(config.ConfigError) as info:
            config.split_args(["--rksc-audit-rate", value])
        assert "--rksc-audit-rate" in str(info.value) and "\n" not in str(info.value)
    # Audits read drafts' verify steps too (tests/test_drafts_e2e.py): the two launch together.
    plan = plan_launch(["--rksc-audit-rate", "0.5", "--rksc-drafts", "on"], cuda=False)
    assert plan.rksc.audit.rate == 0.5 and plan.rksc.drafts.on and "--speculative-algorithm" in plan.argv


PROMPTS = [
    "Write the numbers from 1 to 60, separated by commas: 1, 2, 3,",
    "List the days of the week, then the months of the year, one per line:\nMonday\n",
    "A farmer has 17 sheep. All but 9 run away. " * 6 + "How many are left? Think step by step.",
]


AUDIT_RATE = 0.5


def _rids(audited: bool) -> list[str]:
    """A request id per prompt that the draw at `AUDIT_RATE` audits, or leaves alone (it hashes the id only)."""
    return [
        next(rid for n in range(1000) if sampled(rid := f"audits-{index}-{n}", AUDIT_RATE) == audited)
        for index in range(len(PROMPTS))
    ]


def _generate(url: str, rids: list[str]) -> list[list[int]]:
    out = []
    for rid, prompt in zip(rids, PROMPTS, strict=True):
        body = {"rid": rid, "text": prompt, "sampling_params": {"max_new_tokens": 40, "temperature": 0}}
        resp = requests.post(url + "/generate", json=body, timeout=300)
        resp.raise_for_status()
        out.append(resp.json()["output_ids"])
    return out


def test_audits_change_no_output_and_their_records_add_up(launch_server, default_model_dir: Path, tmp_path: Path):
    # Head compression with a small window, so that the prompts reach past it and the mechanism is real.
    heads = ["--rksc-head-compression", "0.4", "--rksc-window", "16"]
    log = tmp_path / "audits.jsonl"
    # One server: the same prompts under ids the draw leaves alone, then under ids it audits (the cache
    # flushed between, so that both compute every token the same way).
    rate = str(AUDIT_RATE)
    flags = [*heads, "--rksc-audit-rate", rate, "--rksc-audit-log", str(log), "--rksc-audit-positions", "8"]
    left_alone, drawn = _rids(audited=False), _rids(audited=True)
    with launch_server(flags, env=STRICT_MEMORY_ENV, log_name="audited") as server:
        plain = _generate(server.url, left_alone)
        flush_cache(server)
        audited = _generate(server.url, drawn)
        flush_cache(server)
        assert_idle_and_clean(server)  # its /health probes are not audited
        stats = requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]["audits"]
    assert audited == plain  # greedy, same tokens: the audit only reads the logits
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert stats["records_written"] == len(records) >= len(PROMPTS)
    assert stats["requests_audited"] >= stats["records_written"] and stats["log"] == str(log)
    assert stats["positions_written"] == sum(len(r["positions"]) for r in records)
    assert stats["by_mechanism"] == {"heads": len(records)}
    # The draw is the rate's: every id it picked has its record, none of those it left alone.
    assert not {r["rid"] for r in records} & set(left_alone)
    ours = [r for r in records if r["rid"] in drawn]
    assert len(ours) == len(PROMPTS) and [r["output_ids"] for r in ours] == plain
    for record in ours:
        assert 1 <= len(record["positions"]) <= 8 and record["positions"][-1] == len(record["output_ids"]) - 1
        # Greedy: the served top-1 at each kept position is the token that was generated there.
        assert [ids[0] for ids in record["top_ids"]] == [record["output_ids"][p] for p in record["positions"]]
        assert all(lp == sorted(lp, reverse=True) for lp in record["top_logprobs"])
    # The replay: the same tokens in one full-attention forward of the model.
    assert replay.main([str(log), "--model-path", str(default_model_dir), "--output", str(tmp_path / "r.json")]) == 0
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]["heads"]
    assert summary["positions"] == stats["positions_written"]
    assert math.isfinite(summary["kl_mean"]) and summary["kl_mean"] >= 0 and summary["top1_agreement"] > 0.5
