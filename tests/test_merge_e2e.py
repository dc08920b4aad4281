"""Merging near-duplicate branches on the real server: span embeddings in meta_info, grouping in the
frontend, and the programs' --merge-branches option."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sglang as sgl

from sglang_rksc.cache import span_vector
from sglang_rksc.lang import merge_branches
from sglang_rksc.programs import common, gsm8k, self_consistency_verify, tree_of_thought
from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean

CAT = "The cat sat on the warm mat by the door."
CAT_PARAPHRASE = "A cat was sitting on the warm mat near the door."
RATES = "Interest rates rose by two percent in March."
# Measured on SmolLM2-135M: copies of one sentence under different prompts ~0.95-0.98, this
# paraphrase ~0.90-0.92, unrelated sentences below 0.5.
THRESHOLD = 0.85


@pytest.fixture(scope="module")
def span_server(default_model_dir: Path, launch_module_server) -> Iterator[LaunchedServer]:
    args = ["--rksc-span-embeddings", "on", "--rksc-reuse", "on"]
    with launch_module_server(args, env=STRICT_MEMORY_ENV, log_name="merge") as s:
        yield s


@sgl.function
def echo_branches(s, sentences: list[str]):
    forks = s.fork(len(sentences))
    for fork, sentence in zip(forks, sentences, strict=True):
        fork += sgl.user(f"Repeat this sentence exactly: {sentence}")
        fork += sgl.assistant(sgl.gen("echo", max_tokens=20, temperature=0, stop=["\n"]))
    return forks


@sgl.function
def merge_the_root(s):
    s += sgl.user("Say hi.") + sgl.assistant(sgl.gen("hi", max_tokens=4, temperature=0))
    try:
        merge_branches(s, "hi", 0.9)
    except ValueError as exc:
        return str(exc)
    return None


def backend_for(server: LaunchedServer):
    return common.make_backend(server.url)


def test_a_generation_returns_its_span_embedding_and_a_replay_the_same_one(span_server):
    body = {"text": f"Repeat: {CAT}\n", "sampling_params": {"max_new_tokens": 12, "temperature": 0}}
    first = requests.post(span_server.url + "/generate", json=body, timeout=300).json()
    (info,) = first["meta_info"][span_vector.META_KEY]
    vector = span_vector.decode(info)
    assert len(vector) == 576 and info["tokens"] == 11  # SmolLM2's hidden size; the last token has no KV yet
    assert span_vector.similarity(vector, vector) == pytest.approx(1.0, abs=3e-3)  # a unit vector
    second = requests.post(span_server.url + "/generate", json=body, timeout=300).json()
    assert second["meta_info"]["rksc_reuse"][0]["replayed"]
    assert second["meta_info"][span_vector.META_KEY] == first["meta_info"][span_vector.META_KEY]


def test_identical_and_paraphrased_branches_are_grouped_and_unrelated_ones_are_not(span_server):
    sentences = [CAT, RATES, CAT_PARAPHRASE, CAT]
    forks = echo_branches.run(sentences=sentences, backend=backend_for(span_server)).ret_value
    texts = [f["echo"] for f in forks]
    assert texts[0] == texts[3] == CAT and texts[2] != CAT  # the model echoes; the paraphrase stays one
    groups = merge_branches(forks, "echo", THRESHOLD)
    assert groups.note is None
    assert groups.groups == ((0, 2, 3), (1,)), groups.similarities
    assert groups.sizes == [3, 1] and sum(groups.sizes) == len(sentences)
    assert groups.representatives[0] is forks[0] and groups.representatives[1] is forks[1]
    assert min(groups.similarities[2], groups.similarities[3]) >= THRESHOLD
    # A stricter threshold keeps the paraphrase apart (branch 3 is branch 0's exact twin: with
    # --rksc-reuse on it was coalesced or replayed, vector included); -1 merges everything.
    assert merge_branches(forks, "echo", 0.999).groups == ((0, 3), (1,), (2,))
    assert merge_branches(forks, "echo", -1.0).sizes == [4]
    assert_idle_and_clean(span_server)


def test_bad_merge_input_is_a_clear_error(span_server):
    assert "not one state" in merge_the_root.run(backend=backend_for(span_server)).ret_value
    forks = echo_branches.run(sentences=[CAT, RATES], backend=backend_for(span_server)).ret_value
    with pytest.raises(ValueError, match="merge threshold must be a similarity in \\[-1, 1\\]"):
        merge_branches(forks, "echo", 1.5)
    with pytest.raises(ValueError, match="no generation named 'answer'"):
        merge_branches(forks, "answer", 0.9)


def test_merging_identical_greedy_branches_keeps_the_answer_and_skips_their_work(span_server):
    """Greedy branches without openings are identical: merged, the program continues one and
    votes with weight 4 (2 plans x 2 solutions), and answers as it does without merging."""
    problems = gsm8k.load_problems(0, 1)
    args = ["--max-tokens", "24", "--temperature", "0", "--branches", "2", "--depth", "2"]
    backend = backend_for(span_server)
    plain = tree_of_thought.run(
        backend, problems, common.program_options(tree_of_thought, args), parallel=1, progress_bar=False
    )[0]
    merged = tree_of_thought.run(
        backend,
        problems,
        common.program_options(tree_of_thought, [*args, "--merge-branches", "0.9"]),
        parallel=1,
        progress_bar=False,
    )[0]
    assert plain["branch_weights"] == [1, 1, 1, 1] and plain["merged_branches"] == 0
    assert merged["branch_weights"] == [4] and merged["merged_branches"] == 3
    assert merged["prediction"] == plain["prediction"] and merged["branch_answers"][0] == plain["branch_answers"][0]
    # Requests: 2 plans + 2 solutions (all generated) + 1 reflection, against 2 + 4 + 4.
    assert merged["tokens"]["requests"] == 5 and plain["tokens"]["requests"] == 10
    assert len(merged["verifications"]) == 1 and len(plain["verifications"]) == 4

    sc_args = ["--samples", "3", "--max-tokens", "24", "--temperature", "0"]
    options = common.program_options(self_consistency_verify, [*sc_args, "--merge-branches", "0.9"])
    (row,) = self_consistency_verify.run(backend, problems, options, parallel=1, progress_bar=False)
    assert row["sample_weights"] == [3] and len(row["verdicts"]) == 1 and row["tokens"]["requests"] == 3
    assert_idle_and_clean(span_server)


def test_merging_is_a_no_op_without_span_embeddings(rksc_server):
    forks = echo_branches.run(sentences=[CAT, CAT], backend=backend_for(rksc_server)).ret_value
    assert forks[0]["echo"] == forks[1]["echo"]
    assert span_vector.META_KEY not in forks[0].get_meta_info("echo")
    groups = merge_branches(forks, "echo", -1.0)
    assert groups.groups == ((0,), (1,)) and "no span embeddings" in groups.note
    options = common.program_options(
        tree_of_thought, ["--max-tokens", "16", "--temperature", "0", "--depth", "1", "--merge-branches", "0.5"]
    )
    (row,) = tree_of_thought.run(
        backend_for(rksc_server), gsm8k.load_problems(0, 1), options, parallel=1, progress_bar=False
    )
    assert row["branch_weights"] == [1, 1] and row["merged_branches"] == 0
