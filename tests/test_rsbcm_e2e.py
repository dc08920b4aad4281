"""RSBCM on the real server: the policy is selectable, programs mark branches, eviction frees them first."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sglang as sgl

from sglang_rksc.lang import mark_branch
from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache

POOL = 1024  # KV slots: small enough that two long prompts force eviction
RSBCM_ARGS = ["--radix-eviction-policy", "rsbcm", "--max-total-tokens", str(POOL)]
OPENINGS = ["First, ", "Second, ", "Third, "]


@pytest.fixture(scope="module")
def rsbcm_server(default_model_dir: Path, launch_module_server) -> Iterator[LaunchedServer]:
    with launch_module_server(RSBCM_ARGS, env=STRICT_MEMORY_ENV, log_name="rsbcm") as server:
        yield server


def eviction_state(server: LaunchedServer) -> dict:
    state = requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    return {**state["eviction"], "policy": state["eviction_policy"]}


@sgl.function
def three_branches(s):
    s += "Name a fruit and say what colour it is, in one sentence.\n"
    forks = s.fork(3)
    for fork, opening in zip(forks, OPENINGS, strict=True):
        fork += opening + sgl.gen("idea", max_tokens=24, temperature=0)
    return forks


def test_the_policy_is_live(rsbcm_server):
    assert eviction_state(rsbcm_server)["policy"] == "rsbcm"


def test_marked_branches_are_evicted_before_open_ones_and_nothing_leaks(rsbcm_server):
    backend = sgl.RuntimeEndpoint(rsbcm_server.url)
    forks = three_branches.run(backend=backend).ret_value
    assert all(f["idea"] for f in forks)

    before = eviction_state(rsbcm_server)
    assert mark_branch(forks[0], "rejected")
    after_rejected = eviction_state(rsbcm_server)
    assert mark_branch([forks[1]], "finished")
    after_finished = eviction_state(rsbcm_server)
    rejected = after_rejected["marks_tokens_marked"] - before["marks_tokens_marked"]
    finished = after_finished["marks_tokens_marked"] - after_rejected["marks_tokens_marked"]
    assert rejected > 0 and finished > 0
    assert after_finished["marks_requests_marked"] == before["marks_requests_marked"] + 2

    # Two long unrelated prompts need more slots than are free: the tree must give some back.
    for word in ("apple", "river"):
        text = " ".join(f"{word}{i}" for i in range(POOL // 4))
        reply = requests.post(
            rsbcm_server.url + "/generate",
            json={"text": text, "sampling_params": {"max_new_tokens": 1, "temperature": 0}},
            timeout=300,
        )
        assert reply.status_code == 200, reply.text
    end = eviction_state(rsbcm_server)
    evicted = {k: end[f"evicted_{k}"] - before[f"evicted_{k}"] for k in ("rejected", "finished", "open")}
    # The pressure reached open nodes, so by the priority order every marked token went before.
    assert evicted["open"] > 0, evicted
    assert (evicted["rejected"], evicted["finished"]) == (rejected, finished), evicted

    flush_cache(rsbcm_server)
    assert_idle_and_clean(rsbcm_server)


def test_bad_mark_requests_are_refused_and_the_server_keeps_serving(rsbcm_server):
    bad = requests.post(
        rsbcm_server.url + "/set_internal_state",
        json={"server_args": {"rksc_mark/dead/abc": 1}},
        timeout=30,
    )
    assert bad.status_code == 200 and bad.json() == [False]
    unknown = requests.post(
        rsbcm_server.url + "/set_internal_state",
        json={"server_args": {"rksc_mark/rejected/no-such-request": 1}},
        timeout=30,
    )
    assert unknown.json() == [True]
    assert eviction_state(rsbcm_server)["marks_requests_unknown"] >= 1
    with pytest.raises(ValueError, match="mark must be one of"):
        mark_branch([], "dead")
    assert requests.get(rsbcm_server.url + "/health", timeout=30).status_code == 200


def test_marks_are_a_no_op_where_the_policy_is_not_rsbcm(rksc_server):
    """The shared server runs the rksc backend with SGLang's lru: marking sends nothing."""
    forks = three_branches.run(backend=sgl.RuntimeEndpoint(rksc_server.url)).ret_value
    assert mark_branch(forks[0], "rejected") is False
    state = requests.get(rksc_server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    assert state["eviction"]["marks_requests_marked"] == 0


@pytest.mark.slow  # no server: the launcher refuses at once, but each run imports SGLang
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--radix-eviction-policy", "rsbcm", "--radix-cache-backend", "default"],
            "--radix-eviction-policy rsbcm needs --radix-cache-backend rksc",
        ),
        (
            ["--radix-eviction-policy", "rsbcm", "--radix-eviction-policy-config", '{"half_life": -1}'],
            "--radix-eviction-policy-config: rsbcm half_life must be a number >= 1e-09, got -1",
        ),
    ],
)
def test_bad_policy_flags_are_refused_in_one_line(args, message):
    done = subprocess.run(
        [sys.executable, "-m", "sglang_rksc.launch_server", *args], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"sglang-rksc: error: {message}"
