"""Decode-side reuse on the real server: deterministic duplicates are coalesced or replayed, losslessly."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache

PROMPT = "Write one short sentence about the sea.\n"


@pytest.fixture(scope="module")
def reuse_server(default_model_dir: Path, launch_module_server) -> Iterator[LaunchedServer]:
    with launch_module_server(["--rksc-reuse", "on"], env=STRICT_MEMORY_ENV, log_name="reuse") as server:
        yield server


def generate(server: LaunchedServer, text: str, max_new_tokens: int = 16, **sampling) -> dict:
    body = {"text": text, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, **sampling}}
    resp = requests.post(server.url + "/generate", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()


def server_state(server: LaunchedServer) -> dict:
    state = requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    return {**state["counters"], **state["reuse"]}


def reuse_info(reply: dict) -> dict | None:
    info = reply["meta_info"].get("rksc_reuse")
    return info[0] if info else None


def test_one_after_the_other_the_twin_is_replayed_without_a_forward(reuse_server):
    first = generate(reuse_server, PROMPT)
    assert reuse_info(first) is None
    before = server_state(reuse_server)
    second = generate(reuse_server, PROMPT)
    after = server_state(reuse_server)
    assert second["text"] == first["text"] and second["output_ids"] == first["output_ids"]
    assert second["meta_info"]["finish_reason"] == first["meta_info"]["finish_reason"]
    assert reuse_info(second) == {"replayed": True, "source_rid": first["meta_info"]["id"], "tokens": 16}
    assert after["decode_steps"] == before["decode_steps"]  # it did not run
    assert after["prefill_tokens"] == before["prefill_tokens"]
    assert after["reuse_replayed"] == before["reuse_replayed"] + 1
    assert after["reuse_tokens_not_generated"] == before["reuse_tokens_not_generated"] + 16


def test_concurrent_twins_are_coalesced(reuse_server):
    text = "List three colours of the rainbow.\n"
    before = server_state(reuse_server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: generate(reuse_server, text, max_new_tokens=24), range(4)))
    after = server_state(reuse_server)
    assert len({r["text"] for r in replies}) == 1 and len({tuple(r["output_ids"]) for r in replies}) == 1
    how = [reuse_info(r) for r in replies]
    assert how.count(None) == 1  # one of them ran
    assert sum(after[k] - before[k] for k in ("reuse_coalesced", "reuse_replayed")) == 3
    # One request's worth of decoding: 23 steps at most for 24 tokens (the first comes from prefill).
    assert after["decode_steps"] - before["decode_steps"] <= 23


def test_sampled_requests_and_other_tenants_never_share(reuse_server):
    text = "Name a planet.\n"
    base = generate(reuse_server, text, max_new_tokens=8)
    sampled = [generate(reuse_server, text, max_new_tokens=8, temperature=0.8) for _ in range(2)]
    assert all(reuse_info(r) is None for r in sampled)
    other = requests.post(
        reuse_server.url + "/generate",
        json={"text": text, "sampling_params": {"max_new_tokens": 8, "temperature": 0}, "cache_salt": "tenant-b"},
        timeout=300,
    ).json()
    assert reuse_info(other) is None
    # A different sampling parameter is a different result.
    assert reuse_info(generate(reuse_server, text, max_new_tokens=7)) is None
    # The opt-out runs the request itself.
    assert reuse_info(generate(reuse_server, text, max_new_tokens=8, custom_params={"rksc": {"reuse": False}})) is None
    assert reuse_info(generate(reuse_server, text, max_new_tokens=8))["replayed"]
    assert base["meta_info"]["id"]


def test_after_the_path_is_evicted_the_request_is_computed_again(reuse_server):
    text = "Say hello in French.\n"
    first = generate(reuse_server, text)
    flush_cache(reuse_server)
    before = server_state(reuse_server)
    again = generate(reuse_server, text)
    after = server_state(reuse_server)
    assert reuse_info(again) is None
    assert after["decode_steps"] > before["decode_steps"]
    assert len(again["output_ids"]) == len(first["output_ids"])  # computed in full, never truncated


def test_identical_verifications_reuse_the_verdict(reuse_server):
    spec = {"choices": [" yes", " no"]}
    body = {
        "text": PROMPT + "Is the sea wet? Answer:",
        "sampling_params": {"max_new_tokens": 1, "temperature": 0, "custom_params": {"rksc": {"cgee": spec}}},
    }
    first = requests.post(reuse_server.url + "/generate", json=body, timeout=300).json()
    second = requests.post(reuse_server.url + "/generate", json=body, timeout=300).json()
    assert second["meta_info"]["rksc_cgee"] == first["meta_info"]["rksc_cgee"]
    assert reuse_info(second)["replayed"]
    assert server_state(reuse_server)["reuse_verdicts_reused"] >= 1


def test_nothing_leaks(reuse_server):
    flush_cache(reuse_server)
    assert_idle_and_clean(reuse_server)


def test_reuse_is_off_by_default(rksc_server):
    first = generate(rksc_server, PROMPT)
    second = generate(rksc_server, PROMPT)
    assert reuse_info(first) is None and reuse_info(second) is None
