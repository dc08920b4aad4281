"""A fuzzer against the real server with every feature on: no payload may take it down.

Hypothesis draws `/generate` bodies (`tests/fuzz_payloads.py`), sent one to three at a time so that good
and bad requests share batches, then `/set_internal_state` bodies and the arguments of the frontend
primitives. After every example: the answer was a 2xx or a 4xx (never a dropped connection or a 5xx)
and the server still serves. At the end: no forward failure had to be contained (the door caught
everything), no HTTP 5xx in the server's log, and after `/flush_cache` SGLang's strict idle check
reports no leak. The seed is fixed; `SGLANG_RKSC_FUZZ_EXAMPLES` sets the number of `/generate`
examples (default 300, about 600 bodies), and the figures of a run are printed and written to `fuzz-summary.json` in
pytest's temporary folder.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sglang as sgl
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from sglang_rksc.lang import Gate, mark_branch, merge_branches, verify
from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache
from tests.fuzz_payloads import generate_bodies, internal_state_bodies

EVERY_FEATURE = [
    "--rksc-semantic",
    "on",
    "--rksc-probe",  # off by default since 2026-12-07; still served, so still fuzzed
    "on",
    "--rksc-reuse",
    "on",
    "--rksc-span-embeddings",
    "on",
    "--radix-eviction-policy",
    "rsbcm",
]
SEED = 20261126
EXAMPLES = int(os.environ.get("SGLANG_RKSC_FUZZ_EXAMPLES", "150"))  # 1-3 bodies each
FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as drawn
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
# A client request answered with a 5xx (the launcher's own /health polls get 503 until the server is up).
SERVER_ERROR_LINE = re.compile(r'"(?:POST|PUT) \S+ HTTP/[\d.]+" 5\d\d')
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def fuzz_server(default_model_dir: Path, launch_module_server) -> Iterator[LaunchedServer]:
    with launch_module_server(EVERY_FEATURE, env=STRICT_MEMORY_ENV, log_name="fuzz") as server:
        yield server


@pytest.fixture(scope="module")
def vocab(default_model_dir: Path) -> int:
    return int(json.loads((default_model_dir / "config.json").read_text())["vocab_size"])


@pytest.fixture(scope="module")
def tally(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Counter]:
    counts: Counter = Counter()
    yield counts
    path = tmp_path_factory.getbasetemp() / "fuzz-summary.json"
    path.write_text(json.dumps(dict(counts), indent=2, sort_keys=True))
    print(f"\nfuzz summary ({path}): {dict(sorted(counts.items()))}")


def post(server: LaunchedServer, path: str, body: object) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=TIMEOUT_S)


def assert_answered(response: requests.Response, body: object) -> None:
    assert response.status_code < 500, f"HTTP {response.status_code} for {body!r:.600}: {response.text[:400]}"
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        # A stream reports a refusal inside the stream, as a 4xx error object.
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                code = json.loads(line[6:]).get("error", {}).get("code", 200)
                assert code < 500, f"stream error {code} for {body!r:.600}: {line[:400]}"


def assert_serving(server: LaunchedServer) -> None:
    """The server process lives and its scheduler answers (`/server_info` asks it; `/health` takes 1 s)."""
    assert server.proc is not None and server.proc.poll() is None, "the server exited"
    assert requests.get(server.url + "/server_info", timeout=TIMEOUT_S).status_code == 200


def rksc_state(server: LaunchedServer) -> dict:
    return requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]


def test_generate_payloads_never_take_the_server_down(fuzz_server, vocab, tally):
    @settings(FUZZ_SETTINGS, max_examples=EXAMPLES)
    @seed(SEED)
    @given(st.lists(generate_bodies(vocab), min_size=1, max_size=3))
    # Found by this fuzzer (HTTP 500): a batch asking for no samples per prompt.
    @example([{"text": ["a", "b"], "sampling_params": {"n": 0, "max_new_tokens": 2}}])
    def send(bodies: list) -> None:
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda body: post(fuzz_server, "/generate", body), bodies))
        for body, response in zip(bodies, responses, strict=True):
            assert_answered(response, body)
            refused = response.status_code >= 400 or '"error"' in response.text[:200]
            tally["generate refused (4xx)" if refused else "generate served (2xx)"] += 1
            tally[f"generate HTTP {response.status_code}"] += 1
        assert_serving(fuzz_server)

    send()
    assert tally["generate refused (4xx)"] > 0 and tally["generate served (2xx)"] > 0


def test_set_internal_state_payloads_never_take_the_server_down(fuzz_server, tally):
    @settings(FUZZ_SETTINGS, max_examples=60)
    @seed(SEED)
    @given(internal_state_bodies())
    def send(body: object) -> None:
        response = post(fuzz_server, "/set_internal_state", body)
        assert_answered(response, body)
        tally["set_internal_state answered"] += 1
        assert_serving(fuzz_server)

    send()


@sgl.function
def checked_answer(s, check):
    s += "Question: what is 2 + 3? Answer:"
    s += sgl.gen("answer", max_tokens=3, temperature=0, return_logprob=True, top_logprobs_num=2)
    s += " Is that right? Answer yes or no:"
    s += check


def _verify_arguments() -> st.SearchStrategy[dict]:
    """Half the calls within every bound, half with some arguments out of range or of the wrong type."""
    junk = st.one_of(st.none(), st.text(max_size=3), st.just([1]), st.just(math.nan))
    valid = {
        "choices": st.sampled_from([[" yes", " no"], [" no", " yes", " maybe"]]),
        "gate": st.sampled_from([True, False, None, Gate(top=0.0, margin=0.0)]),
        "accept": st.integers(0, 1),
        "theta": st.floats(0, 100),
        "eps": st.floats(0, 100),
        "k": st.integers(1, 29),
        "min_layer": st.integers(1, 30),
        "audit": st.booleans(),
        "early_exit": st.booleans(),
    }
    edges = {
        "choices": st.one_of(st.just([" yes", ""]), st.just([" yes", " yes"]), junk),
        "gate": st.just("on"),
        "accept": st.one_of(st.sampled_from([-1, 3]), junk),
        "theta": st.one_of(st.sampled_from([-1.0, 101.0]), junk),
        "eps": st.one_of(st.sampled_from([-1.0, 101.0]), junk),
        "k": st.one_of(st.sampled_from([0, 30, 31]), junk),
        "min_layer": st.one_of(st.sampled_from([0, 31, 10**6]), junk),
        "audit": st.one_of(st.just(1), junk),
        "early_exit": st.one_of(st.just("no"), junk),
    }
    candidate = {"candidate": st.sampled_from(["answer", "answer", "missing"])}
    mangled = {name: st.one_of(valid[name], edges[name]) for name in valid}
    return st.one_of(
        st.fixed_dictionaries(candidate, optional=valid), st.fixed_dictionaries(candidate, optional=mangled)
    )


def test_verify_arguments_are_refused_when_written_or_by_the_server(fuzz_server, tally):
    """A verify call is either refused when it is written (ValueError), or runs: to a verdict, or to the
    server's 4xx, which the frontend raises; the server keeps serving either way."""
    backend = sgl.RuntimeEndpoint(fuzz_server.url)

    @settings(FUZZ_SETTINGS, max_examples=40)
    @seed(SEED)
    @given(_verify_arguments())
    def run(kwargs: dict) -> None:
        try:
            check = verify("ok", **kwargs)
        except ValueError:
            tally["verify refused when written"] += 1
            return
        state = checked_answer.run(check=check, backend=backend)
        error = state.error()
        if error is None:
            assert state["ok"] in check.choices
            tally["verify ran"] += 1
        else:
            # The frontend raises the server's JSON error body; a 5xx would be plain text or a 5xx code.
            assert isinstance(error, RuntimeError) and "Internal Server Error" not in str(error), repr(error)
            tally["verify refused by the server (4xx)"] += 1
        assert_serving(fuzz_server)

    run()


@sgl.function
def two_branches(s):
    s += "Name a colour:"
    forks = s.fork(2)
    forks += sgl.gen("colour", max_tokens=3, temperature=0)
    return forks


def test_mark_and_merge_arguments_are_refused_with_a_clear_error(fuzz_server, tally):
    backend = sgl.RuntimeEndpoint(fuzz_server.url)
    forks = two_branches.run(backend=backend).ret_value
    states = st.one_of(
        st.just(forks), st.just(forks), st.just(forks[0]), st.sampled_from([None, 1, "x", [], [None], {"a": 1}])
    )

    @settings(FUZZ_SETTINGS, max_examples=40)
    @seed(SEED)
    @given(states, st.sampled_from(["finished", "rejected", "finished", "rejected", "evil", "", [1], None]))
    def mark(target, how) -> None:
        try:
            result = mark_branch(target, how)
        except ValueError:
            tally["mark_branch refused"] += 1
        else:
            assert isinstance(result, bool)
            tally["mark_branch answered"] += 1
        assert_serving(fuzz_server)

    @settings(FUZZ_SETTINGS, max_examples=40)
    @seed(SEED)
    @given(
        states,
        st.sampled_from(["colour", "colour", "colour", "nope", None, 3]),
        st.one_of(st.floats(-1, 1), st.floats(-3, 3), st.sampled_from([math.nan, math.inf, "0.8", True, None])),
    )
    def merge(target, var, threshold) -> None:
        try:
            groups = merge_branches(target, var, threshold)
        except ValueError:
            tally["merge_branches refused"] += 1
        else:
            assert sum(groups.sizes) == len(groups.states)
            tally["merge_branches answered"] += 1

    mark()
    merge()


def test_after_the_fuzz_nothing_failed_inside_and_nothing_leaked(fuzz_server, tally):
    failures = rksc_state(fuzz_server)["failures"]
    assert failures["failed_batches"] == 0, failures  # the door caught everything: no contained forward failure
    server_errors = SERVER_ERROR_LINE.findall(fuzz_server.log_text())
    assert not server_errors, server_errors[:5]
    answer = post(fuzz_server, "/generate", {"text": "The sky is", "sampling_params": {"max_new_tokens": 4}})
    assert answer.status_code == 200 and answer.json()["meta_info"]["completion_tokens"] == 4
    flush_cache(fuzz_server)
    assert_idle_and_clean(fuzz_server)
