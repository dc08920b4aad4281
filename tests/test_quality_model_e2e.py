"""The quality model (Qwen2.5-Coder-1.5B-Instruct) on the real server, whenever it is prepared
(`bash scripts/setup.sh --quality-model`); skipped, saying so, when it is not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from sglang_rksc.runtime import models
from sglang_rksc.runtime.server_process import LaunchedServer
from sglang_rksc.wire import Meta, meta_entry
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache

pytestmark = pytest.mark.skipif(
    not models.is_prepared(models.model_dir(models.QUALITY_MODEL)),
    reason=f"the quality model {models.QUALITY_MODEL} is not prepared (bash scripts/setup.sh --quality-model)",
)

# One server with every feature that composes (one Qwen load: a minute or more on 2 cores).
EVERY_FEATURE = [
    "--rksc-semantic", "on", "--rksc-probe", "on", "--rksc-reuse", "on", "--rksc-span-embeddings", "on",
    "--radix-eviction-policy", "rsbcm", "--rksc-head-compression", "0.4",
]  # fmt: skip


@pytest.fixture(scope="module")
def quality_server(launch_module_server) -> Iterator[LaunchedServer]:
    args = ["--model", models.QUALITY_MODEL, *EVERY_FEATURE]
    with launch_module_server(args, env=STRICT_MEMORY_ENV, log_name="quality", startup_timeout_s=900) as server:
        yield server


def generate(server: LaunchedServer, text: str, **sampling) -> dict:
    body = {"text": text, "sampling_params": {"max_new_tokens": 24, "temperature": 0, **sampling}}
    response = requests.post(server.url + "/generate", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def test_it_answers_arithmetic_and_every_mechanism_reports(quality_server):
    prompt = "<|im_start|>user\nWhat is 17 + 25? Reply with the number only.<|im_end|>\n<|im_start|>assistant\n"
    answer = generate(quality_server, prompt)
    assert "42" in answer["text"]
    assert len(meta_entry(answer["meta_info"], Meta.SPAN)["vector"]) > 0
    twin = generate(quality_server, prompt)
    assert meta_entry(twin["meta_info"], Meta.REUSE)["replayed"] and twin["text"] == answer["text"]
    check = (
        prompt + "42<|im_end|>\n<|im_start|>user\nIs that correct? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
    )
    spec = {"choices": ["yes", "no"], "record": True}
    verdict = generate(quality_server, check, max_new_tokens=1, custom_params={"rksc": {"cgee": spec}})
    info = meta_entry(verdict["meta_info"], Meta.CGEE)
    assert info["num_layers"] == 28 and info["full_verdict_index"] == 0  # "yes", at full depth


def test_head_compression_finds_the_shipped_qwen_mask(quality_server):
    # `--rksc-head-compression` on the named model uses the mask shipped for it (rlkv/masks/), whose heads are
    # Qwen's 28 x 2 KV heads of dimension 128; a prompt inside sink + window gets the uncompressed answer.
    from sglang_rksc.rlkv.head_mask import HeadScores, packaged
    from sglang_rksc.rlkv.layout import HeadLayout

    scores = HeadScores.load(packaged(models.QUALITY_MODEL))
    assert (scores.num_layers, scores.num_kv_heads) == (28, 2)
    layout = HeadLayout.of(scores.compressed_heads(0.4), 16, 64)
    info = requests.get(quality_server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    state = info["head_compression"]
    assert state["heads_compressed"] == layout.compressed_count and 0 < layout.compressed_count < 56
    assert state["bytes_per_token"] == (56 - layout.compressed_count) * 128 * 2 * 2  # K and V, bf16
    prompt = "<|im_start|>user\nWhat is 17 + 25? Reply with the number only.<|im_end|>\n<|im_start|>assistant\n"
    assert "42" in generate(quality_server, prompt, max_new_tokens=8)["text"]


def test_nothing_leaked_on_the_quality_model(quality_server):
    flush_cache(quality_server)
    assert_idle_and_clean(quality_server)
