"""Defence in depth on the real server: a forward that raises aborts its batch, not the server.

The failures are real exceptions raised inside the model's forward (after every layer wrote its KV) by
the plugin's fault injection, for requests whose rid starts with a given prefix. Prefill chunks are
small, so a long prompt fails in the middle of a chunked prefill.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache

FAULTS = "fault-p-:prefill,fault-d-:decode"
ARGS = ["--rksc-reuse", "on", "--radix-eviction-policy", "rsbcm", "--chunked-prefill-size", "32"]


@pytest.fixture(scope="module")
def faulty_server(default_model_dir: Path, launch_module_server) -> Iterator[LaunchedServer]:
    env = {**STRICT_MEMORY_ENV, "SGLANG_RKSC_INJECT_FAULT": FAULTS}
    with launch_module_server(ARGS, env=env, log_name="faults") as server:
        yield server


def generate(server: LaunchedServer, rid: str, text: str, tokens: int) -> requests.Response:
    body = {
        "rid": rid,
        "text": text,
        "sampling_params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True},
    }
    return requests.post(server.url + "/generate", json=body, timeout=300)


def failures(server: LaunchedServer) -> dict:
    return requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]["failures"]


def test_a_failed_prefill_aborts_its_request_and_the_server_serves_on(faulty_server):
    before = failures(faulty_server)
    answer = generate(faulty_server, "fault-p-1", "Tell me about the sea.", 4)
    assert answer.status_code == 500
    assert "fault injected" in answer.text and "aborted" in answer.text
    after = failures(faulty_server)
    assert after["failed_batches"] == before["failed_batches"] + 1
    assert after["aborted_requests"] == before["aborted_requests"] + 1

    served = generate(faulty_server, "ok-after-prefill", "Tell me about the sea.", 4)
    assert served.status_code == 200 and served.json()["meta_info"]["completion_tokens"] == 4
    # Nothing of the failed forward reached the tree: the same prompt was computed again in full.
    assert served.json()["meta_info"]["cached_tokens"] == 0


def test_a_failed_chunk_of_a_long_prompt_is_aborted_whole(faulty_server):
    long_text = "Count with me: " + " ".join(str(i) for i in range(60))  # several chunks of 32 tokens
    answer = generate(faulty_server, "fault-p-long", long_text, 4)
    assert answer.status_code == 500
    served = generate(faulty_server, "ok-after-chunk", long_text, 4)
    assert served.status_code == 200 and served.json()["meta_info"]["completion_tokens"] == 4


def test_a_failed_decode_step_aborts_the_whole_batch_and_nothing_else(faulty_server):
    """One forward computes the batch, so every request in it is aborted; later requests run normally."""
    before = failures(faulty_server)
    with ThreadPoolExecutor(3) as pool:
        innocent = [pool.submit(generate, faulty_server, f"ok-{i}", f"Say something about {i}.", 24) for i in (1, 2)]
        time.sleep(1.0)  # the innocent ones are decoding when the faulty one joins their batch
        faulty = pool.submit(generate, faulty_server, "fault-d-1", "Say something about three.", 24)
        answers = [f.result() for f in [*innocent, faulty]]
    assert answers[-1].status_code == 500 and "fault injected" in answers[-1].text
    aborted = [a for a in answers if a.status_code == 500]
    assert all(a.status_code in (200, 500) for a in answers)
    after = failures(faulty_server)
    assert after["failed_batches"] == before["failed_batches"] + 1
    assert after["aborted_requests"] == before["aborted_requests"] + len(aborted)

    served = generate(faulty_server, "ok-after-decode", "Say something about four.", 8)
    assert served.status_code == 200 and served.json()["meta_info"]["completion_tokens"] == 8


def test_after_contained_failures_every_kv_slot_is_free(faulty_server):
    flush_cache(faulty_server)
    assert_idle_and_clean(faulty_server)
    state = requests.get(faulty_server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    assert state["protected_tokens"] == 0
