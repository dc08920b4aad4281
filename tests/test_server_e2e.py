"""End to end on the real SGLang server (CPU engine, SmolLM2-135M), started by our launcher."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import requests
import sglang as sgl

from sglang_rksc.programs import common
from sglang_rksc.runtime import cpu


def _tree_cache_state(url: str) -> dict:
    info = requests.get(url + "/server_info", timeout=30).json()
    return info["internal_states"][0]["rksc"]


def test_generate_answers(rksc_server):
    resp = requests.post(
        rksc_server.url + "/generate",
        json={"text": "The capital of France is", "sampling_params": {"max_new_tokens": 8, "temperature": 0}},
        timeout=120,
    )
    assert resp.status_code == 200
    body = resp.json()
    assert "Paris" in body["text"]
    assert body["meta_info"]["completion_tokens"] == 8


def test_live_tree_cache_is_the_rksc_backend(rksc_server):
    state = _tree_cache_state(rksc_server.url)
    assert state["backend"] == "rksc" and state["impl"] == "RkscRadixCache" and not state["disabled"]
    assert state["semantic"] is False  # off unless --rksc-semantic on: exactly SGLang's RadixCache
    ready = f"ready at {rksc_server.url}, radix cache backend: rksc (RkscRadixCache)"
    for _ in range(40):  # the launcher prints it from its own poll of /health, a moment later
        if ready in rksc_server.log_text():
            break
        time.sleep(0.25)
    log = rksc_server.log_text()
    assert "Tree cache initialized: source=registered('rksc') impl=RkscRadixCache" in log
    assert ready in log


@sgl.function
def _forked_answers(s, question: str, branches: int):
    s += "You are a careful assistant. Answer in one short sentence.\n"
    s += "Question: " + question + "\n"
    forks = common.fork(s, branches)
    for i, f in enumerate(forks):
        f += f"Answer {i + 1}:" + sgl.gen("answer", max_tokens=8, temperature=0)
    return [f.get_meta_info("answer") for f in forks]


def test_fork_branches_are_served_from_the_radix_cache(rksc_server):
    backend = sgl.RuntimeEndpoint(rksc_server.url)
    state = _forked_answers.run(question="What colour is the sky on a clear day?", branches=3, backend=backend)
    metas = state.ret_value
    assert len(metas) == 3
    for meta in metas:
        # Each branch re-sends the shared prefix, which the fork committed to the tree.
        assert meta["cached_tokens"] > 0, meta
        assert meta["prompt_tokens"] > meta["cached_tokens"]
    assert _tree_cache_state(rksc_server.url)["evictable_tokens"] > 0


def test_bad_request_is_refused_and_the_server_keeps_serving(rksc_server):
    bad = requests.post(
        rksc_server.url + "/generate",
        json={"text": "Hello", "sampling_params": {"max_new_tokens": 4, "temperature": -1}},
        timeout=60,
    )
    assert 400 <= bad.status_code < 500
    good = requests.post(
        rksc_server.url + "/generate",
        json={"text": "Hello", "sampling_params": {"max_new_tokens": 4, "temperature": 0}},
        timeout=60,
    )
    assert good.status_code == 200 and good.json()["meta_info"]["completion_tokens"] == 4


def test_stock_sglang_launcher_picks_up_the_plugin(default_model_dir: Path, launch_server, monkeypatch):
    """`python -m sglang.launch_server ... --radix-cache-backend rksc` finds our backend by its entry point."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CPU runtime setup also edits this process's path
    env = dict(os.environ)
    on_cpu = not cpu.cuda_usable()
    args = ["--model-path", str(default_model_dir), "--radix-cache-backend", "rksc"]
    if on_cpu:
        cpu.activate_cpu_runtime(env, use_standin=cpu.standin_needed())
        args = cpu.apply_cpu_defaults(args)
    with launch_server(args, module="sglang.launch_server", env=env, log_name="stock") as server:
        state = _tree_cache_state(server.url)
        assert state["backend"] == "rksc" and state["impl"] == "RkscRadixCache"
        resp = requests.post(
            server.url + "/generate",
            json={"text": "1, 2, 3, 4,", "sampling_params": {"max_new_tokens": 4, "temperature": 0}},
            timeout=120,
        )
        assert resp.status_code == 200 and resp.json()["meta_info"]["completion_tokens"] == 4
