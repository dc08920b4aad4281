"""Every server-side mechanism on the Qwen2 architecture, on the real server with a tiny random Qwen2
(4 layers, GQA 4/2, separate LM head): hidden-state capture and span vectors, CGEE layer exit, reuse,
RSBCM marks, ASKS; nothing leaked."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sglang_rksc.runtime.server_process import LaunchedServer
from sglang_rksc.wire import Meta, mark_request_args, meta_entry
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache
from tests.tiny_qwen2 import HIDDEN, LAYERS, build_tiny_qwen2

EVERY_FEATURE = [
    "--rksc-semantic", "on", "--rksc-reuse", "on", "--rksc-span-embeddings", "on",
    "--radix-eviction-policy", "rsbcm", "--rksc-cgee-min-layer-fraction", "0.5",
]  # fmt: skip


@pytest.fixture(scope="module")
def qwen2_server(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, launch_module_server
) -> Iterator[LaunchedServer]:
    folder = build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"), default_model_dir)
    args = ["--model-path", str(folder), *EVERY_FEATURE]
    with launch_module_server(args, env=STRICT_MEMORY_ENV, log_name="qwen2") as server:
        yield server


def generate(server: LaunchedServer, text: str, **sampling) -> dict:
    body = {"text": text, "sampling_params": {"max_new_tokens": 6, "temperature": 0, **sampling}}
    response = requests.post(server.url + "/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_model_is_a_qwen2(qwen2_server):
    info = requests.get(qwen2_server.url + "/server_info", timeout=30).json()
    assert "Qwen2ForCausalLM" in qwen2_server.log_text() or "qwen2" in str(info).lower()
    assert info["internal_states"][0]["rksc"]["semantic"]


def test_capture_span_vectors_and_reuse(qwen2_server):
    first = generate(qwen2_server, "Tell me a short story about a cat.")
    span = meta_entry(first["meta_info"], Meta.SPAN)
    from sglang_rksc.cache import span_vector

    vector = span_vector.decode(span)
    assert len(vector) == HIDDEN and math.isclose(math.fsum(x * x for x in vector), 1.0, abs_tol=0.02)
    twin = generate(qwen2_server, "Tell me a short story about a cat.")
    assert meta_entry(twin["meta_info"], Meta.REUSE) == {"replayed": True, "source_rid": first["meta_info"]["id"],
                                                          "tokens": len(first["output_ids"])}  # fmt: skip
    assert twin["output_ids"] == first["output_ids"]


def test_cgee_layer_exit_on_qwen2(qwen2_server):
    spec = {"choices": [" yes", " no"], "record": True, "min_layer": 1}
    audited = generate(qwen2_server, "Is water wet? Answer:", max_new_tokens=1, custom_params={"rksc": {"cgee": spec}})
    info = meta_entry(audited["meta_info"], Meta.CGEE)
    assert info["num_layers"] == LAYERS and info["layers_run"] == LAYERS and len(info["profile"]) == LAYERS
    # A rule that is met at once stops k layers after the minimum (the entropy must hold still over k
    # layers): layer 3 of 4, the last layer is not run.
    quick = {"choices": [" yes", " no"], "theta": 100.0, "eps": 100.0, "k": 1, "min_layer": 2}
    exited = generate(qwen2_server, "Is fire hot? Answer:", max_new_tokens=1, custom_params={"rksc": {"cgee": quick}})
    info = meta_entry(exited["meta_info"], Meta.CGEE)
    assert info["exit_layer"] == 3 and info["layers_run"] == 3 and info["stopped_early"]


def test_rsbcm_marks_and_asks_on_qwen2(qwen2_server):
    first = generate(qwen2_server, "Write one line about the sea and the sky.")
    response = requests.post(
        qwen2_server.url + "/set_internal_state",
        json={"server_args": mark_request_args([first["meta_info"]["id"]], "rejected")},
        timeout=30,
    )
    assert response.json() == [True]
    state = requests.get(qwen2_server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    assert state["eviction"]["marks_requests_marked"] >= 1 and state["stats"]["admissions"] >= 3


def test_nothing_leaked_on_qwen2(qwen2_server):
    flush_cache(qwen2_server)
    assert_idle_and_clean(qwen2_server)
