"""Packets on the real server (default model): a gather prompt over earlier branches takes their KV from the
tree and computes only its other tokens; nothing approximate enters the tree; namespaces are not crossed; no
slot is leaked or freed twice (SGLang's strict idle check)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglang_rksc.lang.gather import put_packets
from sglang_rksc.packets.adapter import SOFT_TOKENS
from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache

QUESTION = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer step by step.\n"


@pytest.fixture(scope="module")
def packet_server(default_model_dir: Path, launch_module_server) -> Iterator[LaunchedServer]:
    with launch_module_server(["--rksc-packets", "on"], env=STRICT_MEMORY_ENV, log_name="packets") as server:
        yield server


def generate(server: LaunchedServer, text: str, max_new_tokens: int = 40, packets=None, adapter=None, **fields) -> dict:
    sampling = {"max_new_tokens": max_new_tokens, "temperature": 0}
    if packets is not None:
        options = {"packets": packets} if adapter is None else {"packets": packets, "adapter": adapter}
        sampling["custom_params"] = {"rksc": options}
    resp = requests.post(
        server.url + "/generate", json={"text": text, "sampling_params": sampling, **fields}, timeout=300
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def counters(server: LaunchedServer) -> dict:
    state = requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    return {**state["counters"], **state["packets"]}


def branches_and_gather(server: LaunchedServer) -> tuple[str, list[str]]:
    texts = [generate(server, QUESTION + f"Attempt {i}:", 24)["text"] for i in (1, 2)]
    gather = (
        QUESTION
        + "Here are two attempts.\nAttempt 1:"
        + texts[0]
        + "\nAttempt 2:"
        + texts[1]
        + "\nWhich final answer is most consistent? The answer is"
    )
    return gather, texts


def packet_info(reply: dict) -> dict:
    return reply["meta_info"]["rksc_packets"][0]


@pytest.fixture(scope="module")
def gathered(packet_server) -> tuple[str, list[str]]:
    flush_cache(packet_server)
    return branches_and_gather(packet_server)


def test_a_gather_prompt_computes_only_its_own_tokens(packet_server, gathered):
    gather, texts = gathered
    before = counters(packet_server)
    reply = generate(packet_server, gather, 8, packets=texts)
    after = counters(packet_server)
    info = packet_info(reply)
    assert len(info["reused"]) == 2 and info["missed"] == 0
    spans = sum(r["end"] - r["start"] for r in info["reused"])
    assert info["tokens_not_computed"] == spans >= 0.8 * sum(len(t) for t in texts) / 8  # tokens, not chars
    prompt, cached = reply["meta_info"]["prompt_tokens"], reply["meta_info"]["cached_tokens"]
    # The forward computed exactly the prompt's other tokens: what was neither cached nor copied.
    assert after["prefill_tokens"] - before["prefill_tokens"] == prompt - cached - info["tokens_not_computed"]
    assert after["packets_tokens_not_computed"] - before["packets_tokens_not_computed"] == info["tokens_not_computed"]
    assert after["packets_spans_reused"] - before["packets_spans_reused"] == 2
    assert 0 < reply["meta_info"]["completion_tokens"] <= 8

    # Nothing of it entered the tree: the same prompt without packets finds only the exact path (the
    # question) and is computed as it is in a namespace of its own, where nothing is cached.
    exact = generate(packet_server, gather, 8)
    assert exact["meta_info"]["cached_tokens"] < info["reused"][0]["start"]
    assert "rksc_packets" not in exact["meta_info"]
    fresh = generate(packet_server, gather, 8, extra_key="reference")
    assert fresh["meta_info"]["cached_tokens"] == 0
    assert exact["output_ids"] == fresh["output_ids"]
    assert_idle_and_clean(packet_server)


def test_the_adapter_wraps_each_reused_packet_in_soft_tokens(packet_server):
    flush_cache(packet_server)  # the exact gather prompt, cached by an earlier test, would hide the packets
    gather, texts = branches_and_gather(packet_server)
    state = requests.get(packet_server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    assert state["packets"]["adapter"] == "smollm2-135m"  # 'auto': the one shipped for the model
    plain = generate(packet_server, gather, 8, packets=texts, adapter=False)  # this request opts out
    before = counters(packet_server)
    wrapped = generate(packet_server, gather, 8, packets=texts)
    after = counters(packet_server)
    p, w = packet_info(plain), packet_info(wrapped)
    assert p["soft_tokens"] == 0 and w["soft_tokens"] == 2 * SOFT_TOKENS * len(w["reused"]) == 4 * SOFT_TOKENS
    assert after["packets_soft_tokens"] - before["packets_soft_tokens"] == w["soft_tokens"]
    assert wrapped["meta_info"]["prompt_tokens"] == plain["meta_info"]["prompt_tokens"] + w["soft_tokens"]
    assert w["tokens_not_computed"] == p["tokens_not_computed"] > 0
    # each packet moved past the soft tokens before it: its header, and the earlier packets' both sides
    assert [r["start"] for r in w["reused"]] == [
        r["start"] + (2 * i + 1) * SOFT_TOKENS for i, r in enumerate(p["reused"])
    ]
    # the tree served only what precedes the first soft token, and the soft tokens were computed
    cached = wrapped["meta_info"]["cached_tokens"]
    assert cached == plain["meta_info"]["cached_tokens"] <= w["reused"][0]["start"] - SOFT_TOKENS
    computed = wrapped["meta_info"]["prompt_tokens"] - cached - w["tokens_not_computed"]
    assert after["prefill_tokens"] - before["prefill_tokens"] == computed
    # and nothing of it entered the tree: the exact prompt is still computed as in a fresh namespace
    exact = generate(packet_server, gather, 8)
    fresh = generate(packet_server, gather, 8, extra_key="reference-2")
    assert exact["output_ids"] == fresh["output_ids"]
    assert_idle_and_clean(packet_server)


def test_standalone_packets_are_computed_once_at_position_zero_and_reused(packet_server):
    docs = [
        "Tom's first bag holds 3 apples, all of them red and ripe, picked this morning.",
        "His second bag holds 5 apples, green ones, bought at the market on Sunday.",
    ]
    assert put_packets(packet_server.url, docs, extra_key="docs") > 30
    # cached: computed once (SGLang computes a cached prompt's last token again, to sample from it)
    assert put_packets(packet_server.url, docs, extra_key="docs") == len(docs)
    prompt = QUESTION + "Notes:\n" + docs[0] + "\n" + docs[1] + "\nHow many apples does Tom have in all?"
    reply = generate(packet_server, prompt, 8, packets=docs, adapter=False, extra_key="docs")
    info = packet_info(reply)
    assert len(info["reused"]) == 2 and info["missed"] == 0
    assert all(r["from"] <= 1 for r in info["reused"])  # each from its own prompt's start (1: its inner tokens)
    assert info["tokens_not_computed"] >= 30
    elsewhere = packet_info(generate(packet_server, prompt, 4, packets=docs, extra_key="tenant-c"))
    assert elsewhere["reused"] == [] and elsewhere["missed"] == 2  # another namespace computes them
    assert_idle_and_clean(packet_server)


def test_another_namespace_never_serves_a_packet(packet_server, gathered):
    gather, texts = gathered
    reply = generate(packet_server, gather, 4, packets=texts, extra_key="tenant-b")
    info = packet_info(reply)
    assert info["reused"] == [] and info["missed"] == 2 and info["tokens_not_computed"] == 0
    assert_idle_and_clean(packet_server)


def test_bad_packets_get_a_400_and_the_server_keeps_serving(packet_server):
    body = {"text": QUESTION, "sampling_params": {"max_new_tokens": 2, "custom_params": {"rksc": {"packets": "x"}}}}
    resp = requests.post(packet_server.url + "/generate", json=body, timeout=60)
    assert resp.status_code == 400 and "packets" in resp.text
    assert generate(packet_server, QUESTION, 2)["meta_info"]["completion_tokens"] == 2


def test_a_server_without_packets_ignores_the_marks(rksc_server):
    text = QUESTION + "Attempt 1: he has 3 + 5 = 8 apples, so the answer is 8.\nWhich answer is right?"
    reply = generate(rksc_server, text, 2, packets=["he has 3 + 5 = 8 apples, so the answer is 8."])
    assert "rksc_packets" not in reply["meta_info"]
