"""ASKS on the real server: paraphrased spans share KV, the duplicate is freed, namespaces stay apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import LEAK_MARKERS, STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache

SYSTEM = "You are a helpful assistant. Answer every question briefly and precisely.\n"
QUESTION = "Question: What is the capital city of France?\nAnswer:"
PARAPHRASE = "Question: What is the capital of France?\nAnswer:"
UNRELATED = "Question: How many legs does a spider have?\nAnswer:"
ASKS_ARGS = [
    "--rksc-semantic", "on", "--rksc-threshold", "0.7", "--rksc-probe", "on", "--rksc-probe-threshold", "0.9",
    "--rksc-min-span", "4",
]  # fmt: skip


@pytest.fixture(scope="module")
def asks_server(default_model_dir: Path, launch_module_server) -> Iterator[LaunchedServer]:
    with launch_module_server(ASKS_ARGS, env=STRICT_MEMORY_ENV, log_name="asks") as server:
        yield server


def generate(server: LaunchedServer, text: str, max_new_tokens: int = 1, **extra) -> dict:
    sampling = {"max_new_tokens": max_new_tokens, "temperature": 0, **extra.pop("sampling", {})}
    resp = requests.post(
        server.url + "/generate", json={"text": text, "sampling_params": sampling, **extra}, timeout=300
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def cache_state(server: LaunchedServer) -> dict:
    return requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]


def test_semantic_backend_is_live(asks_server):
    state = cache_state(asks_server)
    assert state["impl"] == "RkscRadixCache" and state["semantic"]
    assert state["config"]["threshold"] == 0.7
    assert "semantic sharing on" in asks_server.log_text()


def test_paraphrased_span_is_freed_and_the_next_request_forks_from_its_sibling(asks_server):
    first = generate(asks_server, SYSTEM + QUESTION)
    assert first["meta_info"]["rksc_semantic"] == [{"fork": False}]
    before = cache_state(asks_server)["stats"]
    # The paraphrase may not fork at admission, so it is computed and becomes the sibling's duplicate.
    second = generate(asks_server, SYSTEM + PARAPHRASE, sampling={"custom_params": {"rksc": {"fork": False}}})
    assert second["meta_info"]["rksc_semantic"] == [{"fork": False, "skipped": "fork opted out"}]
    after = cache_state(asks_server)["stats"]
    assert after["dedupes"] == before["dedupes"] + 1 and after["slots_freed"] > before["slots_freed"]
    # A request reaching the freed span forks from the sibling and reuses its KV.
    third = generate(asks_server, SYSTEM + PARAPHRASE + " The capital", max_new_tokens=4)
    (info,) = third["meta_info"]["rksc_semantic"]
    assert info["fork"] and info["source"] == "alias" and info["reused_tokens"] > 0
    assert (
        third["meta_info"]["cached_tokens"]
        >= len(
            requests.post(asks_server.url + "/tokenize", json={"prompt": SYSTEM + QUESTION}, timeout=30).json()[
                "tokens"
            ]
        )
        - 1
    )
    # Another tenant never reaches this tenant's KV, exactly or semantically.
    other = generate(asks_server, SYSTEM + PARAPHRASE + " The capital", max_new_tokens=4, cache_salt="other-tenant")
    assert other["meta_info"]["rksc_semantic"] == [{"fork": False}]
    assert other["meta_info"]["cached_tokens"] == 0


def test_unrelated_question_is_neither_forked_nor_freed(asks_server):
    before = cache_state(asks_server)["stats"]
    reply = generate(asks_server, SYSTEM + UNRELATED)
    assert reply["meta_info"]["rksc_semantic"] == [{"fork": False}]
    after = cache_state(asks_server)["stats"]
    assert after["dedupes"] == before["dedupes"] and after["semantic_hits"] == before["semantic_hits"]


PLAN = "You are a careful assistant.\nPlan:"
DONOR_SPAN = " add the two numbers, then multiply the result by three and report the final answer clearly."
BRANCH_SPAN = " sum the two numbers, then multiply the result by three and report the final answer clearly."


def tokens(server: LaunchedServer, text: str) -> int:
    return len(requests.post(server.url + "/tokenize", json={"prompt": text}, timeout=30).json()["tokens"])


def test_a_forked_branch_follow_up_hits_the_rewritten_path_when_the_donor_has_children(asks_server):
    generate(asks_server, PLAN + DONOR_SPAN + " First", max_new_tokens=4)
    branch = generate(asks_server, PLAN + BRANCH_SPAN + " Second", max_new_tokens=4)
    (fork,) = branch["meta_info"]["rksc_semantic"]
    assert fork["fork"] and fork["source"] == "probe", fork
    # The donor's span now goes on two ways (its own " First" and the branch's " Second"): it has children.
    before = cache_state(asks_server)["stats"]
    follow = generate(asks_server, PLAN + BRANCH_SPAN + " Second" + branch["text"] + " Third", max_new_tokens=2)
    (info,) = follow["meta_info"]["rksc_semantic"]
    assert info["source"] == "followup" and not info["fork"], info
    after = cache_state(asks_server)["stats"]
    assert (
        after["followups_hit"] == before["followups_hit"] + 1
        and after["followups_missed"] == before["followups_missed"]
    )
    assert (after["forks_probe"], after["forks_alias"]) == (before["forks_probe"], before["forks_alias"])  # no new fork
    # Nothing of the rewritten span was computed again: the cache served all of it (and what follows, up to
    # where the client's re-tokenized text parts from the branch's own output tokens).
    assert follow["meta_info"]["cached_tokens"] >= tokens(asks_server, PLAN + DONOR_SPAN), branch["text"]


def test_a_select_on_a_forked_branch_hits_the_rewritten_path_and_scores_its_own_tail(asks_server):
    """A `select` asks for the logprobs of its choice tokens: it is a follow-up like any other, and the
    logprobs it gets are those of the tokens it sent after the span (the same count, the same tokens)."""
    generate(asks_server, PLAN + DONOR_SPAN + " Alpha", max_new_tokens=4)
    branch = generate(asks_server, PLAN + BRANCH_SPAN + " Beta", max_new_tokens=4)
    # Rewritten onto the donor's span: forked now, or a follow-up of the fork of the test above.
    assert branch["meta_info"]["rksc_semantic"][0].get("source") in ("probe", "followup"), branch["meta_info"]
    choice_text = PLAN + BRANCH_SPAN + " Beta" + branch["text"] + " Score: 5"
    start = tokens(asks_server, choice_text) - 3
    choice = generate(
        asks_server, choice_text, max_new_tokens=0, return_logprob=True, logprob_start_len=start,
        return_text_in_logprobs=True,
    )  # fmt: skip
    (info,) = choice["meta_info"]["rksc_semantic"]
    assert info["source"] == "followup", info
    assert choice["meta_info"]["cached_tokens"] >= tokens(asks_server, PLAN + DONOR_SPAN)
    logprobs = choice["meta_info"]["input_token_logprobs"]
    assert len(logprobs) == 3 and "".join(text for _, _, text in logprobs).endswith(": 5"), logprobs


def test_no_kv_slot_leaked_or_freed_twice(asks_server):
    """After all of the above, flushing the tree returns every slot; the idle check finds nothing."""
    flush_cache(asks_server)
    state = cache_state(asks_server)
    assert state["evictable_tokens"] == state["protected_tokens"] == 0 and state["aliases"] == 0
    assert_idle_and_clean(asks_server)


def test_bad_semantic_flags_are_refused_in_one_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "sglang_rksc.launch_server", "--rksc-threshold", "1.5"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "sglang-rksc: error: --rksc-threshold must be in [-1, 1], got 1.5"


def test_layer_pooling_runs_on_the_real_server(default_model_dir: Path, launch_server):
    """--rksc-pooling layers: states of several decoder layers, captured by forward hooks."""
    args = [*ASKS_ARGS, "--rksc-pooling", "layers", "--rksc-pooling-layers", "3"]
    with launch_server(args, env=STRICT_MEMORY_ENV, log_name="layers") as server:
        assert "pooling layers [15, 22, 29]" in server.log_text()
        generate(server, SYSTEM + QUESTION)
        generate(server, SYSTEM + PARAPHRASE, sampling={"custom_params": {"rksc": {"fork": False}}})
        stats = cache_state(server)["stats"]
        assert stats["dedupes"] == 1 and stats["slots_freed"] > 0
        reply = generate(server, SYSTEM + PARAPHRASE + " The capital", max_new_tokens=4)
        assert reply["meta_info"]["rksc_semantic"][0]["source"] == "alias"
        assert not [m for m in LEAK_MARKERS if m in server.log_text()]
