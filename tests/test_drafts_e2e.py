"""Drafts on the real server (CPU): the same greedy tokens, the same sampled distribution, no leak, no draft
across tenants, bad input refused.

Both servers run in fp32: in bf16 a verify forward (several tokens per row, SGLang's extend attention) and a
one-token decode round differently, and a near tie of SmolLM2 can then flip (seen on "Repeat after me ...").
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglang_rksc.bench.server_stats import snapshot
from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache
from tests.test_drafts_unit import chi_square_differs

COMMON = ["--dtype", "float32", "--chunked-prefill-size", "64", "--max-total-tokens", "1600", "--enable-metrics"]
# The GPU profile drafts long whatever the acceptance: more drafted tokens to verify, and to reject.
DRAFTS = ["--rksc-drafts", "on", "--rksc-draft-max-tokens", "6", "--rksc-draft-profile", "gpu"]
REPEATING = [
    "Repeat after me: the cat sat on the mat. the cat sat on the mat. the cat sat on the mat.",
    "Copy this list exactly: apples, pears, plums, apples, pears, plums, apples, pears,",
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(",
]
LONG = "Here is a story. " + " ".join(f"Line {i}: the river runs to the sea." for i in range(14)) + " Go on:"
COUNTING = "1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,"


# SGLang's own test switch: retract running requests every third forward, so every test below also runs
# through retractions (a retracted request gives back its KV, drafts included, and is run again later).
# Requests whose rid starts with "drafts-fault-" fail in their decode (verify) step: the failure is contained.
RETRACTING_ENV = {**STRICT_MEMORY_ENV, "SGLANG_TEST_RETRACT": "1", "SGLANG_RKSC_INJECT_FAULT": "drafts-fault-:decode"}


@pytest.fixture(scope="module")
def audit_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audits") / "audits.jsonl"


@pytest.fixture(scope="module")
def drafts_server(default_model_dir: Path, launch_module_server, audit_log: Path) -> Iterator[LaunchedServer]:
    # Every generation audited, every position kept: the tests below compare its tokens with the plain server's,
    # so they also show that audits under drafts change no output.
    audits = ["--rksc-audit-rate", "1", "--rksc-audit-log", str(audit_log), "--rksc-audit-positions", "4096"]
    with launch_module_server([*COMMON, *DRAFTS, *audits], env=RETRACTING_ENV, log_name="drafts") as server:
        yield server


@pytest.fixture(scope="module")
def plain_server(default_model_dir: Path, launch_module_server) -> Iterator[LaunchedServer]:
    with launch_module_server(COMMON, env=STRICT_MEMORY_ENV, log_name="plain") as server:
        yield server


def generate(server: LaunchedServer, text, max_new_tokens: int = 40, **fields) -> list[dict] | dict:
    sampling = {"max_new_tokens": max_new_tokens, "temperature": 0, **fields.pop("sampling", {})}
    resp = requests.post(
        server.url + "/generate", json={"text": text, "sampling_params": sampling, **fields}, timeout=600
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def drafts_of(reply: dict) -> dict:
    return reply["meta_info"]["rksc_drafts"][0]


def drafts_state(server: LaunchedServer) -> dict:
    return requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]["drafts"]


def test_greedy_outputs_are_the_tokens_of_the_server_without_drafts(drafts_server, plain_server):
    prompts = [*REPEATING, LONG]  # LONG is prefilled in chunks of 64 tokens
    with_drafts = generate(drafts_server, prompts, 48)
    without = generate(plain_server, prompts, 48)
    assert [r["output_ids"] for r in with_drafts] == [r["output_ids"] for r in without]
    accepted = sum(sum(drafts_of(r)["accepted"].values()) for r in with_drafts)
    steps = sum(drafts_of(r)["verify_steps"] for r in with_drafts)
    tokens = sum(r["meta_info"]["completion_tokens"] for r in with_drafts)
    assert accepted > 0 and steps < tokens  # drafts were accepted: fewer decode steps than tokens
    assert drafts_state(drafts_server)["length"]["profile"] == "gpu"


def audit_records(log: Path, outputs: list[list[int]]) -> list[dict]:
    """The audit records of these outputs, in their order (each written as its request finished)."""
    deadline = time.monotonic() + 30
    while True:
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        by_output = {tuple(r["output_ids"]): r for r in records}
        if all(tuple(o) in by_output for o in outputs) or time.monotonic() > deadline:
            return [by_output.get(tuple(o)) for o in outputs]
        time.sleep(0.5)


def test_audits_read_every_position_of_an_accepted_run(drafts_server, audit_log):
    """A verify step gives several tokens per request: the audit keeps each one's distribution, the row of the
    step that produced it (greedy: its top token is the token)."""
    replies = generate(drafts_server, [f"{text} (audit)" for text in REPEATING], 32)
    assert sum(sum(drafts_of(r)["accepted"].values()) for r in replies) > 0
    outputs = [r["output_ids"] for r in replies]
    for output, record in zip(outputs, audit_records(audit_log, outputs), strict=True):
        assert record is not None and record["mechanisms"] == ["none"]
        assert record["positions"] == list(range(len(output)))
        assert [ids[0] for ids in record["top_ids"]] == output


def test_greedy_outputs_survive_retraction(drafts_server, plain_server):
    """Requests retracted mid-decode (SGLang's test switch) and run again later: their tokens are still those
    of the server without drafts."""
    prompts = [f"{REPEATING[i % 3]} ({i})" for i in range(6)]
    before = snapshot(drafts_server.url)
    with_drafts = generate(drafts_server, prompts, 40, sampling={"ignore_eos": True})
    after = snapshot(drafts_server.url)
    without = generate(plain_server, prompts, 40, sampling={"ignore_eos": True})
    assert after["retracted_requests"] > before["retracted_requests"]
    assert [r["output_ids"] for r in with_drafts] == [r["output_ids"] for r in without]


def test_a_request_aborted_with_drafts_in_flight_leaves_nothing_behind(drafts_server):
    done = threading.Event()

    def stream() -> None:
        body = {
            "rid": "drafts-abort-me",
            "text": REPEATING[0],
            "stream": True,
            "sampling_params": {"max_new_tokens": 400, "temperature": 0, "ignore_eos": True},
        }
        with requests.post(drafts_server.url + "/generate", json=body, stream=True, timeout=600) as resp:
            for _ in resp.iter_lines():
                if done.is_set():
                    break

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(3)
    assert requests.post(drafts_server.url + "/abort_request", json={"rid": "drafts-abort-me"}, timeout=30).ok
    done.set()
    thread.join(timeout=120)
    assert generate(drafts_server, REPEATING[1], 8)["meta_info"]["completion_tokens"] == 8
    flush_cache(drafts_server)
    assert_idle_and_clean(drafts_server)


def test_many_rejected_drafts_leak_no_slot(drafts_server):
    before = drafts_state(drafts_server)
    hot = {"temperature": 1.5, "top_k": 50}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda text: generate(drafts_server, text, 40, sampling=hot), REPEATING * 3))
    after = drafts_state(drafts_server)
    drafted = sum(after["drafted"].values()) - sum(before["drafted"].values())
    accepted = sum(after["accepted"].values()) - sum(before["accepted"].values())
    assert drafted - accepted > 20  # many drafted tokens were rejected
    flush_cache(drafts_server)
    assert_idle_and_clean(drafts_server)  # SGLang's strict idle check would have failed the server


def test_no_draft_comes_from_another_tenant(drafts_server):
    """A request whose prompt ends where another tenant's output goes on: only its own tenant drafts it."""
    flush_cache(drafts_server)
    prompt = "Write a short story about a fox who finds a golden key in the snow."  # nothing repeats in it
    go_on = {"ignore_eos": True}
    first = generate(drafts_server, prompt, 40, cache_salt="tenant-a", sampling=go_on)
    text = prompt + first["text"][: len(first["text"]) // 2]
    other_tenant = drafts_of(generate(drafts_server, text, 16, cache_salt="tenant-b", sampling=go_on))
    same_tenant = drafts_of(generate(drafts_server, text, 16, cache_salt="tenant-a", sampling=go_on))
    assert not {"branch", "other"} & set(other_tenant["drafted"])
    assert same_tenant["drafted"].get("branch", 0) + same_tenant["drafted"].get("other", 0) > 0  # the control


def first_tokens(server: LaunchedServer, n: int) -> list[tuple]:
    replies = generate(server, [COUNTING] * n, 3, sampling={"temperature": 1.3})
    return [tuple(r["output_ids"]) for r in replies]


def test_sampled_tokens_keep_their_distribution(drafts_server, plain_server, launch_server):
    """The first three sampled tokens, 300 times, with and without drafts: a chi-square test of homogeneity
    at a false-alarm rate of 0.001 does not tell them apart. The same test does tell apart a server whose
    verification accepts every draft (the control: the test can fail)."""
    with_drafts, without = first_tokens(drafts_server, 300), first_tokens(plain_server, 300)
    assert not chi_square_differs(with_drafts, without)
    env = {**STRICT_MEMORY_ENV, "RKSC_DRAFTS_FAULT": "accept-all"}
    with launch_server([*COMMON, *DRAFTS], env=env, log_name="accept-all") as faulty:
        assert chi_square_differs(first_tokens(faulty, 300), without)


def test_a_bad_per_request_option_is_a_400_and_the_server_serves_on(drafts_server):
    body = {"text": "Hi", "sampling_params": {"max_new_tokens": 2, "custom_params": {"rksc": {"drafts": "yes"}}}}
    resp = requests.post(drafts_server.url + "/generate", json=body, timeout=60)
    assert resp.status_code == 400 and "drafts must be true or false" in resp.text
    off = generate(drafts_server, REPEATING[0], 24, sampling={"custom_params": {"rksc": {"drafts": False}}})
    assert drafts_of(off)["drafted"] == {}
    assert drafts_of(off)["verify_steps"] == off["meta_info"]["completion_tokens"] - 1  # one token per step


def test_a_failed_verify_step_aborts_its_batch_and_the_server_serves_on(drafts_server):
    body = {"rid": "drafts-fault-1", "text": REPEATING[0], "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    failed = requests.post(drafts_server.url + "/generate", json=body, timeout=120)
    assert failed.status_code == 500 and "fault injected" in failed.text
    assert generate(drafts_server, REPEATING[2], 12)["meta_info"]["completion_tokens"] == 12
    flush_cache(drafts_server)
    assert_idle_and_clean(drafts_server)
