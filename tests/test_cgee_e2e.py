"""CGEE on the real CPU server with the default model: `verify`, layer exit, validation, fallback."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
import requests
import sglang as sgl

from sglang_rksc import Gate, verify
from sglang_rksc.lang.verify import select_probabilities
from sglang_rksc.runtime import cpu

CASES = [
    ("The capital of France is", [" Paris", " London", " Rome"]),
    ("Question: What is 2 + 2?\nAnswer:", [" 4", " 5"]),
    ("Is the sky blue? Answer yes or no.\nAnswer:", [" yes", " no"]),
    ("The opposite of hot is", [" cold", " warm"]),
]


@sgl.function
def _by_select(s, prompt, choices):
    s += prompt
    s += sgl.select("v", choices=choices)


@sgl.function
def _by_verify(s, prompt, choices, early_exit):
    s += prompt
    s += verify("v", choices=choices, gate=False, early_exit=early_exit)


def _generate(url: str, prompt: str, cgee: dict | None, max_new_tokens: int = 1) -> requests.Response:
    params: dict = {"max_new_tokens": max_new_tokens, "temperature": 0}
    if cgee is not None:
        params["custom_params"] = {"rksc": {"cgee": cgee}}
    return requests.post(url + "/generate", json={"text": prompt, "sampling_params": params}, timeout=120)


def test_full_depth_verdict_equals_sglang_select(rksc_server):
    backend = sgl.RuntimeEndpoint(rksc_server.url)
    for prompt, choices in CASES:
        stock = _by_select.run(prompt=prompt, choices=choices, backend=backend)
        ours = _by_verify.run(prompt=prompt, choices=choices, early_exit=False, backend=backend)
        meta = ours.get_meta_info("v")
        assert meta["cgee"] and meta["layers_run"] == meta["num_layers"] == 30, meta
        assert ours["v"] == stock["v"], (prompt, meta, stock.get_meta_info("v"))
        assert ours["v"] == choices[max(range(len(choices)), key=meta["probs"].__getitem__)]
        # select's distribution, read from its token logprobs, is the one verify scores (bfloat16 apart).
        assert select_probabilities(stock.get_meta_info("v"), len(choices)) == pytest.approx(meta["probs"], abs=0.03)


def test_layer_exit_stops_early_and_its_kv_never_enters_the_tree(rksc_server):
    prompt = f"Reference {uuid.uuid4().hex}. Is this a reference? Answer yes or no.\nAnswer:"
    # theta above ln(2) and a wide eps: the rule fires as soon as k+1 layers were checked.
    resp = _generate(rksc_server.url, prompt, {"choices": [" yes", " no"], "min_layer": 2, "k": 1, "theta": 1.0})
    assert resp.status_code == 200, resp.text
    info = resp.json()["meta_info"]["rksc_cgee"][0]
    assert info["exit_layer"] == 3 and info["layers_run"] == 3 and info["stopped_early"], info
    assert resp.json()["text"] in (" yes", " no")
    # The same prompt unmarked: nothing of it was cached by the exited forward...
    first = _generate(rksc_server.url, prompt, None)
    assert first.json()["meta_info"]["cached_tokens"] == 0
    # ...while a full-depth forward of it is cached as usual.
    again = _generate(rksc_server.url, prompt, None)
    assert again.json()["meta_info"]["cached_tokens"] > 0


def test_bad_verifications_get_clear_errors_and_the_server_keeps_serving(rksc_server):
    prompt = "Is water wet? Answer:"
    for cgee, max_new, message in [
        ({"choices": [" yes", " no"], "min_layer": 99}, 1, "model's depth"),
        ({"choices": [" yes", " yes"]}, 1, "distinct"),
        ({"choices": [" yes", " yes please"]}, 1, "prefixes of one another"),
        ({"choice_ids": [9805, 10**9]}, 1, "not in the vocabulary"),
        ({"choices": ["", " no"]}, 1, "empty"),
        ({"choices": [" yes", " no"], "theta": "high"}, 1, "theta"),
        ({"choices": [" yes", " no"]}, 5, "max_new_tokens must be 1"),
    ]:
        resp = _generate(rksc_server.url, prompt, cgee, max_new)
        assert resp.status_code == 400 and message in resp.text, (cgee, resp.text)
    assert _generate(rksc_server.url, prompt, {"choices": [" yes", " no"]}).status_code == 200


@sgl.function
def _branches(s, question):
    s += "Question: " + question + "\nAnswer:"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f" (attempt {i + 1})"
        f += sgl.gen("answer", max_tokens=6, temperature=0, stop="\n", return_logprob=True, top_logprobs_num=2)
        f += "\nIs this answer correct? Answer yes or no.\nVerdict:"
        f += verify("ok", candidate="answer", gate=False)
    return [(f["ok"], f.get_meta_info("ok")) for f in forks]


def test_verify_under_fork_and_run_batch(rksc_server):
    backend = sgl.RuntimeEndpoint(rksc_server.url)
    states = _branches.run_batch([{"question": "What is 3 + 4?"}, {"question": "What is 10 - 7?"}], backend=backend)
    results = [r for st in states for r in st.ret_value]
    assert len(results) == 4
    for verdict, meta in results:
        assert meta["cgee"] and not meta["skipped"] and meta["confidence"] is not None
        assert 1 <= meta["layers_run"] <= meta["num_layers"]
        assert verdict == meta["server_verdict"] and verdict in (" yes", " no")


class _CountingEndpoint(sgl.RuntimeEndpoint):
    """The real endpoint, counting the /generate calls that `select` and `verify` make."""

    calls = 0

    def _generate_http_request(self, s, data):
        type(self).calls += 1
        return super()._generate_http_request(s, data)


@sgl.function
def _gated(s, gate):
    s += "Count: 1, 2, 3,"
    s += sgl.gen("next", max_tokens=4, temperature=0, return_logprob=True, top_logprobs_num=2)
    s += "\nDid the count continue correctly? Answer yes or no.\nAnswer:"
    s += verify("ok", candidate="next", gate=gate)


def test_a_skipped_verification_makes_no_server_call(rksc_server):
    backend = _CountingEndpoint(rksc_server.url)
    _CountingEndpoint.calls = 0
    always = Gate(top=0.0, margin=0.0, alt_top=0.0, rel_margin=0.0)
    state = _gated.run(gate=always, backend=backend)
    meta = state.get_meta_info("ok")
    assert meta["skipped"] and state["ok"] == " yes" and meta["layers_run"] == 0
    assert _CountingEndpoint.calls == 0
    never = Gate(top=1.0, margin=1.0, alt_top=1.0, rel_margin=1.0)
    state = _gated.run(gate=never, backend=backend)
    assert not state.get_meta_info("ok")["skipped"] and _CountingEndpoint.calls == 1


def test_verify_falls_back_to_select_on_a_server_without_the_plugin(
    default_model_dir: Path, launch_server, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CPU runtime setup also edits this process's path
    env = dict(os.environ, SGLANG_PLUGINS="none")
    args = ["--model-path", str(default_model_dir)]
    if not cpu.cuda_usable():
        cpu.activate_cpu_runtime(env, use_standin=cpu.standin_needed())
        args = cpu.apply_cpu_defaults(args)
    with launch_server(args, module="sglang.launch_server", env=env, log_name="stock") as server:
        backend = sgl.RuntimeEndpoint(server.url)
        prompt, choices = CASES[0]
        ours = _by_verify.run(prompt=prompt, choices=choices, early_exit=True, backend=backend)
        meta = ours.get_meta_info("v")
        assert meta["cgee"] is False and "without the sglang-rksc plugin" in meta["note"]
        assert ours["v"] == _by_select.run(prompt=prompt, choices=choices, backend=backend)["v"]
        # The server ignores the mark it does not know: a full forward, no CGEE report.
        plain = _generate(server.url, prompt, {"choices": choices})
        assert plain.status_code == 200 and "rksc_cgee" not in plain.json()["meta_info"]


if __name__ == "__main__":
    pytest.main([__file__])


@sgl.function
def _thresholded(s, prompt, threshold, audit):
    s += prompt
    s += verify("v", choices=[" yes", " no"], gate=False, early_exit=False, audit=audit, threshold=threshold)


def test_a_verdict_threshold_is_applied_to_the_servers_probability(rksc_server):
    backend = sgl.RuntimeEndpoint(rksc_server.url)
    prompt = "Is the sky blue? Answer yes or no.\nAnswer:"
    plain = _thresholded.run(prompt=prompt, threshold=None, audit=False, backend=backend)
    p_yes = plain.get_meta_info("v")["score"]
    assert 0.0 < p_yes < 1.0 and plain["v"] == (" yes" if p_yes >= 0.5 else " no")
    # Below the server's P(yes) the verdict is "yes", above it "no".
    for threshold, verdict in ((p_yes * 0.5, " yes"), (p_yes + (1 - p_yes) / 2, " no")):
        state = _thresholded.run(prompt=prompt, threshold=threshold, audit=False, backend=backend)
        meta = state.get_meta_info("v")
        assert state["v"] == verdict and meta["threshold"] == threshold
        assert meta["score"] == pytest.approx(p_yes, abs=1e-3)
    # Audited, the full-depth verdict follows the same rule.
    for threshold, verdict in ((0.0, " yes"), (1.0, " no")):
        state = _thresholded.run(prompt=prompt, threshold=threshold, audit=True, backend=backend)
        assert state["v"] == state.get_meta_info("v")["full_verdict"] == verdict
    with pytest.raises(ValueError, match="threshold must be a probability"):
        verify("v", choices=[" yes", " no"], threshold=1.5)
