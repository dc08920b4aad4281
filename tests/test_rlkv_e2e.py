"""RLKV head compression on the real server: the uncompressed outputs while the window covers the sequence,
the pool's arithmetic, windows given back, and no reuse past an incomplete window."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sglang as sgl

from sglang_rksc.rlkv.head_mask import HeadScores
from sglang_rksc.rlkv.hooks import capacity_scale
from sglang_rksc.rlkv.layout import HeadLayout
from sglang_rksc.runtime.server_process import LaunchedServer
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache

SPARSITY = 0.4
SINK, WINDOW = 4, 64
POOL = 1024
PROMPTS = [
    "The capital of France is",
    "Write a long story about a dragon who learns to count. Once upon a time",
    "List the planets of the solar system in order, with one fact about each:",
]


@pytest.fixture(scope="module")
def head_mask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scores for SmolLM2's 30 x 3 KV heads; which heads are cut does not matter to these tests."""
    rng = random.Random(18)
    path = tmp_path_factory.mktemp("rlkv") / "mask.json"
    HeadScores("smollm2-135m", 30, 3, SINK, WINDOW, [[rng.random() for _ in range(3)] for _ in range(30)]).save(path)
    return path


@pytest.fixture(scope="module")
def compressed_server(head_mask: Path, launch_module_server) -> Iterator[LaunchedServer]:
    args = [
        "--rksc-head-compression", str(SPARSITY), "--rksc-head-mask", str(head_mask),
        "--rksc-sink", str(SINK), "--rksc-window", str(WINDOW), "--max-total-tokens", str(POOL),
        "--rksc-window-pool", "0.25",
    ]  # fmt: skip
    with launch_module_server(args, env=STRICT_MEMORY_ENV, log_name="compressed") as server:
        yield server


def generate(
    server: LaunchedServer, text: str | None = None, ids: list[int] | None = None, n: int = 48, ignore_eos: bool = False
) -> dict:
    body = {"sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": ignore_eos}}
    body.update({"text": text} if ids is None else {"input_ids": ids})
    response = requests.post(server.url + "/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def heads_state(server: LaunchedServer) -> dict:
    state = requests.get(server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    return state["head_compression"]


def test_sequences_within_the_window_get_the_uncompressed_outputs(compressed_server, rksc_server):
    for prompt in PROMPTS:  # prompt and output within the 64-token window: compressed heads see everything
        assert generate(compressed_server, prompt, n=32)["text"] == generate(rksc_server, prompt, n=32)["text"]


def test_bytes_per_token_and_capacity_follow_the_mask(compressed_server, head_mask):
    state = heads_state(compressed_server)
    layout = HeadLayout.of(HeadScores.load(head_mask).compressed_heads(SPARSITY), SINK, WINDOW)
    per_head = (64 + 64) * 2  # K and V, head_dim 64, bf16
    assert state["heads_compressed"] == layout.compressed_count == 36
    assert state["bytes_per_token"] == (90 - 36) * per_head
    assert state["bytes_per_window_slot"] == 36 * per_head
    assert state["token_slots"] == int(POOL * capacity_scale(layout, 0.25)) > POOL
    assert state["window_slots"] == int(state["token_slots"] * 0.25)


def test_branches_share_the_prefix_and_every_window_slot_comes_back(compressed_server):
    @sgl.function
    def branches(s):
        s += "Explain step by step how to bake bread at home, starting with the flour and the water.\n"
        forks = s.fork(3)
        for fork, opening in zip(forks, ["First, ", "To begin, ", "Start by "], strict=True):
            fork += opening + sgl.gen("step", max_tokens=72, temperature=0, ignore_eos=True)
        return [f["step"] for f in forks]

    steps = branches.run(backend=sgl.RuntimeEndpoint(compressed_server.url)).ret_value
    assert all(steps)
    for prompt in PROMPTS:
        assert generate(compressed_server, prompt, n=24)["text"]
    state = heads_state(compressed_server)
    # Idle: every window slot taken belongs to a cached token (none leaked by a finished request).
    assert 0 < state["window_slots_used"] == state["window_slots_in_tree"], state
    flush_cache(compressed_server)
    assert heads_state(compressed_server)["window_slots_used"] == 0
    assert_idle_and_clean(compressed_server)


def test_a_match_inside_a_dropped_window_is_cut_back_to_a_complete_one(compressed_server):
    flush_cache(compressed_server)
    prompt = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
    prompt_ids = requests.post(compressed_server.url + "/tokenize", json={"prompt": prompt}, timeout=30).json()[
        "tokens"
    ]
    first = generate(compressed_server, ids=prompt_ids, n=100, ignore_eos=True)
    # All 100 generated tokens are cached, but the compressed heads kept only the last 64 positions: a request
    # that continues after the 30th may reuse the prompt, whose window is complete, and recomputes the rest.
    cut_before = heads_state(compressed_server)["matches_cut"]
    second = generate(compressed_server, ids=prompt_ids + first["output_ids"][:30], n=8)
    assert heads_state(compressed_server)["matches_cut"] == cut_before + 1
    assert second["meta_info"]["cached_tokens"] == len(prompt_ids)
    # Continuing at the end of the cached sequence reuses all of it: its window is complete.
    third = generate(compressed_server, ids=prompt_ids + first["output_ids"][:99], n=8)
    assert third["meta_info"]["cached_tokens"] == len(prompt_ids) + 98
    assert heads_state(compressed_server)["matches_cut"] == cut_before + 1
    state = heads_state(compressed_server)
    assert state["window_slots_used"] == state["window_slots_in_tree"], state
    flush_cache(compressed_server)
    assert heads_state(compressed_server)["window_slots_used"] == 0
    assert_idle_and_clean(compressed_server)


def test_the_recomputation_after_a_cut_keeps_a_window_at_the_branch_point(compressed_server):
    """Requests that diverge inside a cached sequence (a shared few-shot prompt, a branch) are cut back to a
    complete window and recompute; the recomputation keeps a window before the point where it diverged, so
    the next request diverging there reuses the whole prefix."""
    flush_cache(compressed_server)

    def ids(text: str) -> list[int]:
        return requests.post(compressed_server.url + "/tokenize", json={"prompt": text}, timeout=30).json()["tokens"]

    prompt = ids("Write a long story about a lighthouse keeper and the storms of one winter. It began when")
    first = generate(compressed_server, ids=prompt, n=200, ignore_eos=True)["output_ids"]
    shared = prompt + first[:100]
    tail_y = ids(" ".join(["Meanwhile, far away in the mountains, a shepherd counted his goats."] * 6))[:80]
    tail_z = ids(" ".join(["The baker rose before dawn and lit the ovens in the quiet town."] * 6))[:80]
    cut = heads_state(compressed_server)["matches_cut"]
    second = generate(compressed_server, ids=shared + tail_y, n=4)
    assert heads_state(compressed_server)["matches_cut"] == cut + 1  # diverged mid-sequence: cut back
    assert second["meta_info"]["cached_tokens"] == len(prompt)
    third = generate(compressed_server, ids=shared + tail_z, n=4)
    assert heads_state(compressed_server)["matches_cut"] == cut + 1
    assert third["meta_info"]["cached_tokens"] == len(shared)
    state = heads_state(compressed_server)
    assert state["window_slots_used"] == state["window_slots_in_tree"], state
    flush_cache(compressed_server)
    assert_idle_and_clean(compressed_server)


def test_short_of_window_slots_the_tree_gives_back_a_branch_points_window_before_any_token(compressed_server):
    """Two long branches from a shared prompt make its end an interior node with a window of its own. When
    the window pool runs short, that window goes first: no token is evicted, both branches are still reused
    to their ends, and only a new branch diverging exactly there is cut back to the sinks."""
    flush_cache(compressed_server)
    rng = random.Random(18)
    prompt = [rng.randrange(1000, 5000) for _ in range(120)]
    first, second, third = ([rng.randrange(5000, 9000) for _ in range(80)] for _ in range(3))
    second[0] = first[0] + 1  # the branches diverge right at the prompt's end
    third[0] = first[0] + 2
    generate(compressed_server, ids=prompt + first, n=1)
    generate(compressed_server, ids=prompt + second, n=1)  # cut back, recomputed with a window at the branch point
    before = requests.get(compressed_server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    state = heads_state(compressed_server)
    assert state["window_slots_used"] == SINK + 3 * (WINDOW + 8), state  # sinks, branch point, two ends
    for _ in range(state["window_slots"] // 30 + 2):  # unrelated requests, each leaving 33 windowed tokens
        generate(compressed_server, ids=[rng.randrange(10000, 40000) for _ in range(30)], n=4, ignore_eos=True)
        if heads_state(compressed_server)["interior_windows_dropped"] > state["interior_windows_dropped"]:
            break
    after = requests.get(compressed_server.url + "/server_info", timeout=30).json()["internal_states"][0]["rksc"]
    assert after["head_compression"]["interior_windows_dropped"] - state["interior_windows_dropped"] == WINDOW + 8
    assert after["eviction"]["evicted_tokens"] == before["eviction"]["evicted_tokens"]
    extra = [rng.randrange(10000, 40000) for _ in range(5)]
    for branch in (first, second):  # both ends keep their windows: reused whole
        assert generate(compressed_server, ids=prompt + branch + extra, n=1)["meta_info"]["cached_tokens"] == 200
    cut = heads_state(compressed_server)["matches_cut"]
    assert generate(compressed_server, ids=prompt + third, n=1)["meta_info"]["cached_tokens"] == SINK
    assert heads_state(compressed_server)["matches_cut"] == cut + 1
    state = heads_state(compressed_server)
    assert state["window_slots_used"] == state["window_slots_in_tree"], state
    flush_cache(compressed_server)
    assert_idle_and_clean(compressed_server)


def test_more_requests_than_the_window_pool_holds_wait_instead_of_stopping_the_server(compressed_server):
    """Each request owns up to sink + window + 1 window slots; ten at once need about twice what the pool
    has. Admission makes the rest wait (before the fix, the sixth prefill stopped the server)."""
    flush_cache(compressed_server)
    state = heads_state(compressed_server)
    bound = SINK + WINDOW + 1
    count = 2 * state["window_slots"] // bound + 1
    words = "apple river stone cloud pepper lantern violin meadow copper falcon harbor".split()
    rng = random.Random(7)
    prompts = [f"Request {i}: " + " ".join(rng.choice(words) for _ in range(70)) for i in range(count)]
    with ThreadPoolExecutor(max_workers=count) as pool:
        outputs = list(pool.map(lambda p: generate(compressed_server, p, n=24, ignore_eos=True), prompts))
    assert [o["meta_info"]["completion_tokens"] for o in outputs] == [24] * count
    assert all(o["meta_info"]["prompt_tokens"] > WINDOW for o in outputs)
    assert heads_state(compressed_server)["admissions_deferred"] > state["admissions_deferred"]
    flush_cache(compressed_server)
    assert heads_state(compressed_server)["window_slots_used"] == 0
    assert_idle_and_clean(compressed_server)
