"""ASKS, head compression and packets on together, on the real server: each keeps its own guarantees (forks
and dedupe, windows never serving a dropped position, packets counted once and carrying windows), and SGLang's
strict idle check finds every slot freed once after `/flush_cache`."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest
import requests

from sglang_rksc.rlkv.head_mask import HeadScores
from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache
from tests.test_asks_e2e import ASKS_ARGS, PARAPHRASE, QUESTION, SYSTEM

SINK, WINDOW = 4, 32
MATH = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer step by step.\n"


@pytest.fixture(scope="module")
def everything_server(
    tmp_path_factory: pytest.TempPathFactory, launch_module_server: Callable[..., LaunchedServer]
) -> Iterator[LaunchedServer]:
    folder = tmp_path_factory.mktemp("composition")
    rng = random.Random(32)
    mask = folder / "mask.json"
    HeadScores("smollm2-135m", 30, 3, SINK, WINDOW, [[rng.random() for _ in range(3)] for _ in range(30)]).save(mask)
    args = [
        *ASKS_ARGS, "--rksc-packets", "on", "--rksc-packet-adapter", "none",
        "--rksc-head-compression", "0.4", "--rksc-head-mask", str(mask), "--rksc-sink", str(SINK),
        "--rksc-window", str(WINDOW), "--max-total-tokens", "4096",
    ]  # fmt: skip
    with launch_module_server(args, env=STRICT_MEMORY_ENV, log_name="composition") as server:
        yield server


def generate(server: LaunchedServer, text: str, max_new_tokens: int = 1, **sampling) -> dict:
    body = {"text": text, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, **sampling}}
    resp = requests.post(server.url + "/generate", json=body, timeout=300)
    assert resp.status_code == 200, resp.text
    return resp.json()


def state(server: LaunchedServer) -> dict:
    return requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]


def test_all_three_start_and_say_so(everything_server):
    info = state(everything_server)
    assert info["semantic"] and info["packets"]["on"] and info["head_compression"]["heads_compressed"] == 36
    assert "rksc cache features: marks, asks, heads, packets" in everything_server.log_text()


def test_asks_forks_and_dedupes_under_head_compression(everything_server):
    flush_cache(everything_server)
    generate(everything_server, SYSTEM + QUESTION)
    before = state(everything_server)["stats"]
    generate(everything_server, SYSTEM + PARAPHRASE, custom_params={"rksc": {"fork": False}})
    after = state(everything_server)["stats"]
    assert after["dedupes"] == before["dedupes"] + 1 and after["slots_freed"] > before["slots_freed"]
    third = generate(everything_server, SYSTEM + PARAPHRASE + " The capital", max_new_tokens=4)
    (fork,) = third["meta_info"]["rksc_semantic"]
    # the donor ends a cached node, whose window the tree keeps: the fork reuses it
    assert fork["fork"] and fork["source"] == "alias" and fork["reused_tokens"] > 0
    assert third["meta_info"]["cached_tokens"] > 0
    assert state(everything_server)["stats"]["forks_unreachable"] == 0
    assert_idle_and_clean(everything_server)


def test_packets_carry_windows_and_are_counted_once(everything_server):
    flush_cache(everything_server)
    # the branches opt out of ASKS: dedupe would free the second one's KV into an alias of the first
    keep = {"rksc": {"semantic": False}}
    texts = [generate(everything_server, MATH + f"Attempt {i}:", 40, custom_params=keep)["text"] for i in (1, 2)]
    gather = MATH + "Here are two attempts.\nAttempt 1:" + texts[0] + "\nAttempt 2:" + texts[1] + "\nThe answer is"
    before = state(everything_server)
    reply = generate(everything_server, gather, 8, custom_params={"rksc": {"packets": texts}})
    after = state(everything_server)
    (info,) = reply["meta_info"]["rksc_packets"]
    assert len(info["reused"]) == 2 and info["missed"] == 0 and info["tokens_not_computed"] > 0, info
    packets_before, packets_after = before["packets"], after["packets"]
    assert packets_after["packets_spans_reused"] - packets_before["packets_spans_reused"] == 2
    assert (
        packets_after["packets_tokens_not_computed"] - packets_before["packets_tokens_not_computed"]
        == info["tokens_not_computed"]
    )
    # the prefill computed exactly the prompt's tokens that were neither matched nor copied
    prompt, cached = reply["meta_info"]["prompt_tokens"], reply["meta_info"]["cached_tokens"]
    computed = after["counters"]["prefill_tokens"] - before["counters"]["prefill_tokens"]
    assert computed == prompt - cached - info["tokens_not_computed"]
    # where the request keeps a window (its last WINDOW positions), a copied position brought its
    # compressed heads along from the branch's own end window; the rest of those positions were computed
    assert packets_after["packets_window_tokens_copied"] > packets_before["packets_window_tokens_copied"]
    assert 0 < reply["meta_info"]["completion_tokens"] <= 8
    assert after["failures"]["failed_batches"] == before["failures"]["failed_batches"]


def test_no_dropped_window_served_and_every_slot_freed_once(everything_server):
    """Nothing read a dropped window (it would raise and the batch would fail), no slot leaked or was freed
    twice (SGLang's strict idle check), and every window slot is free once the tree is flushed."""
    flush_cache(everything_server)
    log = everything_server.log_text()
    assert "was dropped but is needed" not in log and "MissingWindowKV" not in log
    info = state(everything_server)
    assert info["failures"]["failed_batches"] == 0
    assert info["head_compression"]["window_slots_used"] == 0
    assert info["evictable_tokens"] == info["protected_tokens"] == 0 and info["aliases"] == 0
    assert_idle_and_clean(everything_server)
