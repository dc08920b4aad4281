"""RLKV head compression without a server: the pool's window slots, the complete-prefix rule, the
attention backend against the torch reference, the launcher's checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sglang_rksc.config import HeadCompressionSettings, RkscConfig, SemanticSettings
from sglang_rksc.kernels.sink_window import head_split_attention
from sglang_rksc.rlkv.attention import KERNEL_ENV, HeadSplitAttnBackend, MissingWindowKV
from sglang_rksc.rlkv.hooks import capacity_scale
from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool, WindowPoolExhausted
from sglang_rksc.rlkv.launch_checks import resolve
from sglang_rksc.rlkv.layout import HeadLayout
from sglang_rksc.rlkv.windows import complete_prefix, windows_held_by

LAYERS, KV_HEADS, Q_HEADS, DIM = 2, 2, 4, 8
SINK, WINDOW = 2, 4
MASK = [[False, True], [True, False]]  # one compressed KV head per layer


class _Weakable:
    """A stand-in for SGLang's `Req` or `PrefillAdder`: the pool keys its per-request tables by them, weakly."""

    def __init__(self, **fields) -> None:
        self.__dict__.update(fields)


def _pool_class() -> type[HeadSplitKVPool]:
    """The pool class as SGLang receives it: configured with the layout, built with SGLang's own arguments."""
    return HeadSplitKVPool.configured(HeadLayout.of(MASK, SINK, WINDOW), 0.5)


@pytest.fixture
def pool(sglang_context):
    return _pool_class()(
        64, 1, torch.float32, head_num=KV_HEADS, head_dim=DIM, layer_num=LAYERS, device="cpu", enable_memory_saver=False
    )


def test_the_pool_holds_only_full_heads_per_token(pool):
    assert [tuple(b.shape) for b in pool.k_buffer] == [(65, 1, DIM)] * LAYERS
    assert [tuple(b.shape) for b in pool.window_k] == [(33, 1, DIM)] * LAYERS
    assert pool.describe()["bytes_per_token"] == LAYERS * 1 * 2 * DIM * 4


def test_window_slots_are_taken_moved_and_given_back_once(pool):
    slots = torch.tensor([3, 4, 5, 6])
    pool.keep_windows(slots)
    pool.keep_windows(slots)  # already kept: nothing new
    assert pool.used_window_slots == 4
    pool.drop_windows(torch.tensor([3, 3, 9]))
    assert pool.used_window_slots == 3 and not bool(pool.has_window(torch.tensor([3])))
    held = pool.detach_windows(torch.tensor([4, 5]))
    assert pool.used_window_slots == 3 and not bool(pool.has_window(torch.tensor([4, 5])).any())
    # 4's window moves to 10 (a tree slot without one); 6 has its own, so 5's is freed
    pool.attach_windows(torch.tensor([10, 6]), held)
    assert pool.used_window_slots == 2
    assert pool.has_window(torch.tensor([10, 6])).all()
    pool.drop_windows(torch.tensor([10, 6]))
    assert pool.used_window_slots == 0 and pool.free_window_slots == pool.window_size
    pool.reset_windows()
    assert pool.free_window_slots == pool.window_size


def test_window_slots_in_use_are_those_of_held_tokens_each_counted_once(pool):
    """The benchmarks' KV in use counts the window slots of tokens requests hold, not those of evictable
    cached tokens (a shared prefix once, however many requests hold it)."""
    req_to_token = torch.zeros(4, 16, dtype=torch.long)
    req_to_token[0, :6] = torch.tensor([1, 2, 3, 4, 5, 6])
    req_to_token[1, :6] = torch.tensor([1, 2, 3, 4, 7, 8])  # shares 1-4 with row 0
    pool.keep_windows(torch.tensor([1, 2, 4, 5, 7, 20, 21]))  # 20, 21: cached, held by no request

    def req(row, allocated):
        return SimpleNamespace(kv=SimpleNamespace(req_pool_idx=row, kv_allocated_len=allocated))

    assert windows_held_by(pool, req_to_token, [req(0, 6), req(1, 6)]) == 5  # 1, 2, 4, 5, 7
    assert windows_held_by(pool, req_to_token, [req(0, 3), req(None, 0)]) == 2
    assert windows_held_by(pool, req_to_token, []) == 0 and pool.used_window_slots == 7


@pytest.fixture
def big(pool):
    """A pool of 128 token slots, 64 window slots (the layout of `pool`: kept window 4 + 8)."""
    return _pool_class()(
        128, 1, torch.float32, head_num=KV_HEADS, head_dim=DIM, layer_num=LAYERS, device="cpu",
        enable_memory_saver=False,
    )  # fmt: skip


def test_interior_nodes_give_back_windows_no_child_end_needs_least_recent_first(big):
    """Short of window slots, the tree first drops the windows of unlocked interior nodes (a match ending
    there is cut back); every leaf end stays complete and the sinks stay."""
    from sglang_rksc.rlkv.tree_windows import drop_interior_windows

    def node(first_slot, length, accessed, children=()):
        return SimpleNamespace(
            key=[0] * length, value=torch.arange(first_slot, first_slot + length), lock_ref=0,
            last_access_time=accessed, children=dict(enumerate(children)),
        )  # fmt: skip

    f, g = node(56, 16, 3), node(72, 14, 3)  # positions [50, 66) and [50, 64)
    b = node(31, 20, 1, (f, g))  # [30, 50): interior, least recently used
    c = node(51, 5, 3)  # [30, 35): a short leaf, whose window reaches back into a
    a = node(1, 30, 2, (b, c))  # [0, 30)
    root = SimpleNamespace(key=[], value=None, lock_ref=1, last_access_time=0, children={0: a})
    for leaf in (a, b, c, f, g):  # each inserted with its sinks and kept window
        big.keep_windows(leaf.value[-12:])
    big.keep_windows(a.value[:SINK])

    def complete(*path):
        slots = torch.cat([n.value for n in path])
        return complete_prefix(big, slots) == slots.numel()

    assert all(complete(*p) for p in ((a,), (a, b), (a, c), (a, b, f), (a, b, g)))
    assert drop_interior_windows(root, big, 10) == 12  # b's whole window (both children are long)
    assert not complete(a, b) and complete(a, b, f) and complete(a, b, g)
    a.lock_ref = 1  # a running request holds a: nothing of it is given back
    assert drop_interior_windows(root, big, 100) == 0
    a.lock_ref = 0
    # a keeps its sinks and the tail c's end window needs: positions [2, 23) go (18..22 held a window)
    assert drop_interior_windows(root, big, 100) == 5 and big.interior_windows_dropped == 17
    assert complete(a, c) and complete(a) and bool(big.has_window(a.value[:SINK]).all())
    assert all(complete(*p) for p in ((a, b, f), (a, b, g)))


def test_the_window_pool_refuses_more_than_it_holds(pool):
    with pytest.raises(WindowPoolExhausted):
        pool.keep_windows(torch.arange(1, pool.window_size + 2))


def test_a_window_pool_too_small_for_two_requests_is_refused_at_start(pool):
    with pytest.raises(ValueError, match="fewer than 30"):
        _pool_class()(
            8,
            1,
            torch.float32,
            head_num=KV_HEADS,
            head_dim=DIM,
            layer_num=LAYERS,
            device="cpu",
            enable_memory_saver=False,
        )


def test_admission_reserves_a_prefills_windows_and_pins_its_match_while_it_evicts(pool):
    """The serving benchmark found admission evicting, for window slots, the very prefix the request had
    matched (SGLang pins it only inside `add_one_req`): the request then read freed slots."""
    from sglang.srt.managers.schedule_policy import AddReqResult

    from sglang_rksc.rlkv import windows

    events = []
    cached = torch.arange(1, pool.window_size + 1)
    pool.keep_windows(cached)  # every window slot is held by cached tokens

    class Tree:
        def lock(self, node):
            events.append(("lock", node))
            return node

        def unlock(self, lock):
            events.append(("unlock", lock))

        evictable = True

        def evictable_size(self):
            return int(pool.has_window(cached).sum()) if self.evictable else 0

        def evict(self, params):
            events.append(("evict", params.num_tokens))
            pool.drop_windows(cached[: params.num_tokens])

    def add_one_req(adder, req, *args):
        adder.can_run_list.append(req)
        return AddReqResult.CONTINUE

    adder = _Weakable(
        token_to_kv_pool_allocator=SimpleNamespace(_kvcache=pool), running_batch=SimpleNamespace(reqs=[1, 2]),
        can_run_list=[], tree_cache=Tree(),
    )  # fmt: skip
    req = _Weakable(last_node="match", prefix_len=3, full_untruncated_fill_ids=list(range(12)))
    # kept: the sinks (2) and the last WINDOW + KEEP_SLACK (12), and as many before a branch point
    assert windows.extend_need(pool, 3, 12) == 9 and windows.extend_need(pool, 0, 40) == 2 + 12
    assert windows.extend_need(pool, 3, 40, branch_point=20) == 12 + 12  # [8, 20) and [28, 40)
    # positions 3..11 all kept, + its first decode step, + one step of each of the 2 running requests
    assert windows.admit_with_windows(add_one_req, adder, req, False, None) == AddReqResult.CONTINUE
    assert events == [("lock", "match"), ("evict", 12), ("unlock", "match")]
    assert pool.reserved_by_round[adder] == 2 + 10 and pool.free_window_slots == 12
    # the next prefill of the round does not fit beside the first one and nothing is left to evict
    adder.tree_cache.evictable = False  # the rest of the tree is locked
    second = _Weakable(last_node=None, prefix_len=0, full_untruncated_fill_ids=list(range(40)))
    assert windows.admit_with_windows(add_one_req, adder, second, False, None) == AddReqResult.NO_TOKEN
    assert pool.admissions_deferred == 1 and len(adder.can_run_list) == 1


def test_an_admission_whose_match_lost_its_window_or_its_nodes_this_round_waits(pool):
    """A waiting request's match is made before the round's admissions; an earlier admission may drop the
    window at its end or evict its nodes (for window slots). Then it must not be admitted on that match."""
    from array import array

    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams
    from sglang.srt.sampling.sampling_params import SamplingParams

    from sglang_rksc.rlkv.windows import _match_still_complete
    from tests.pool_harness import PoolHarness

    harness = PoolHarness(RkscConfig(), slots=64)
    harness.run(list(range(1, 31)), [40, 41])  # cached: 31 tokens
    tree = torch.tensor(harness.tree_slots())
    pool.keep_windows(tree)  # every cached position keeps its window
    waiting = Req("waiting", "", array("q", [*range(1, 21), 99]), SamplingParams(max_new_tokens=4))
    waiting.init_next_round_input(harness.cache)
    assert waiting.prefix_len == 20 and _match_still_complete(harness.cache, pool, waiting)
    end_window = harness.cache.path_device_indices(waiting.last_node)[17:20]
    pool.drop_windows(end_window)  # another admission took the window at the match's end
    assert not _match_still_complete(harness.cache, pool, waiting)
    pool.keep_windows(end_window)
    assert _match_still_complete(harness.cache, pool, waiting)
    harness.cache.evict(EvictParams(num_tokens=64))  # ... or evicted the matched nodes
    assert not _match_still_complete(harness.cache, pool, waiting)


def test_a_match_ends_where_sinks_and_window_are_complete(pool):
    slots = torch.arange(1, 13)  # positions 0..11
    pool.keep_windows(slots[[0, 1, 5, 6, 7]])  # sinks 0-1 and positions 5-7 (a node ending at 8)
    # at 8 the next query sees sinks and positions 5, 6, 7: complete; past 8 position 8 is missing
    assert complete_prefix(pool, slots) == 8
    assert complete_prefix(pool, slots[:8]) == 8
    assert complete_prefix(pool, slots[:7]) == 2  # at 7 it would need 4, which was dropped
    pool.drop_windows(slots[[1]])  # a sink lost: only position 1 itself can be continued from
    assert complete_prefix(pool, slots) == 1


def test_the_backend_matches_the_reference(pool):
    torch.manual_seed(0)
    seq_len = 11
    req_to_token = torch.zeros((2, 32), dtype=torch.long)
    req_to_token[1, :seq_len] = torch.arange(20, 20 + seq_len)
    backend = object.__new__(HeadSplitAttnBackend)
    backend.pool, backend.sink, backend.window = pool, SINK, WINDOW
    backend.decode_kernel = os.environ.get(KERNEL_ENV) == "1"  # the GPU path, run by Triton's interpreter
    backend.req_to_token_pool = SimpleNamespace(req_to_token=req_to_token)
    q = torch.randn(seq_len, Q_HEADS * DIM)
    k, v = torch.randn(seq_len, KV_HEADS * DIM), torch.randn(seq_len, KV_HEADS * DIM)
    pos = torch.arange(seq_len)
    # the prefill keeps windows for the sinks and the last WINDOW positions, as `windows` does
    kept = pos[(pos < SINK) | (pos >= seq_len - 1 - WINDOW)]
    pool.keep_windows(req_to_token[1, kept])
    for layer_id in range(LAYERS):
        layer = SimpleNamespace(
            layer_id=layer_id, tp_q_head_num=Q_HEADS, tp_k_head_num=KV_HEADS, qk_head_dim=DIM, v_head_dim=DIM,
            scaling=DIM**-0.5, is_cross_attention=False, sliding_window_size=None,
        )  # fmt: skip
        expected = head_split_attention(
            q.view(seq_len, Q_HEADS, DIM).movedim(0, 1), k.view(seq_len, KV_HEADS, DIM).movedim(0, 1),
            v.view(seq_len, KV_HEADS, DIM).movedim(0, 1), pos, pos, torch.tensor(MASK[layer_id]),
            SINK, WINDOW, DIM**-0.5,
        ).movedim(0, 1)  # fmt: skip
        prefill = SimpleNamespace(
            out_cache_loc=req_to_token[1, : seq_len - 1], req_pool_indices=torch.tensor([1]),
            seq_lens=torch.tensor([seq_len - 1]), extend_prefix_lens=torch.tensor([0]),
        )  # fmt: skip
        out = backend.forward_extend(q[:-1], k[:-1], v[:-1], layer, prefill).view(-1, Q_HEADS, DIM)
        torch.testing.assert_close(out, expected[:-1], rtol=1e-4, atol=1e-4)
        decode = SimpleNamespace(
            out_cache_loc=req_to_token[1, seq_len - 1 : seq_len], req_pool_indices=torch.tensor([1]),
            seq_lens=torch.tensor([seq_len]),
        )  # fmt: skip
        step = backend.forward_decode(q[-1:], k[-1:], v[-1:], layer, decode).view(-1, Q_HEADS, DIM)
        torch.testing.assert_close(step, expected[-1:], rtol=1e-4, atol=1e-4)
    if backend.decode_kernel:  # the kernel trusts the window invariant (no host sync to check it)
        return
    # a stored position whose window was dropped is refused, not attended to
    pool.drop_windows(req_to_token[1, seq_len - 2 : seq_len - 1])
    with pytest.raises(MissingWindowKV):
        backend.forward_decode(q[-1:], k[-1:], v[-1:], layer, decode)


def test_the_backend_decodes_through_the_triton_kernel_as_through_torch():
    """The GPU decode path of the backend (both halves: full heads over token slots, compressed heads over
    window slots) gives the reference's outputs; run by Triton's interpreter in a fresh process."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", KERNEL_ENV: "1"}
    test = f"{Path(__file__).name}::test_the_backend_matches_the_reference"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=Path(__file__).parent, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def test_capacity_scale_counts_token_and_window_bytes():
    layout = HeadLayout.of([[True, False, False]] * 10, 16, 64)  # 10 of 30 heads compressed
    assert capacity_scale(layout, 0.25) == pytest.approx(30 / (20 + 0.25 * 10))
    assert capacity_scale(HeadLayout.of([[False] * 3] * 10, 16, 64), 0.25) == 1.0


def _model_folder(tmp_path, architecture="LlamaForCausalLM", layers=2, kv_heads=2):
    folder = tmp_path / f"{architecture}-{layers}-{kv_heads}"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({"architectures": [architecture], "num_hidden_layers": layers, "num_key_value_heads": kv_heads})
    )
    return str(folder)


def _scores_file(tmp_path, layers=2, kv_heads=2):
    from sglang_rksc.rlkv.head_mask import HeadScores

    path = tmp_path / "scores.json"
    HeadScores("m", layers, kv_heads, 16, 64, [[0.1 * (h + 1)] * kv_heads for h in range(layers)]).save(path)
    return path


def test_the_launcher_resolves_and_refuses_in_one_line(tmp_path):
    scores = _scores_file(tmp_path)
    on = RkscConfig(heads=HeadCompressionSettings(sparsity=0.5, head_mask=str(scores)))
    assert resolve(RkscConfig(), "/nowhere", []) == RkscConfig()  # off: nothing checked
    assert resolve(on, _model_folder(tmp_path), []).heads.head_mask == str(scores.resolve())
    cases = [
        (on, _model_folder(tmp_path, "MixtralForCausalLM"), [], "this model is MixtralForCausalLM"),
        (on, _model_folder(tmp_path, layers=3), [], "this model has 3 x 2"),
        (on, _model_folder(tmp_path), ["--page-size", "16"], "--page-size 1"),
        (on, _model_folder(tmp_path), ["--attention-backend", "triton"], "--attention-backend torch_native"),
        (on, _model_folder(tmp_path), ["--speculative-algorithm", "EAGLE"], "speculative"),
        (RkscConfig(heads=HeadCompressionSettings(sparsity=0.5)), _model_folder(tmp_path), [], "no head mask ships"),
    ]
    for settings, folder, argv, message in cases:
        with pytest.raises(ValueError, match=message.replace("-", r"\-")):
            resolve(settings, folder, argv)
    # ASKS composes with head compression (its forks go only where the windows let a request continue)
    both = RkscConfig(semantic=SemanticSettings(on=True), heads=on.heads)
    assert resolve(both, _model_folder(tmp_path), []).semantic.on


def test_a_random_mask_deals_the_shipped_scores_to_the_heads_by_seed(tmp_path, monkeypatch):
    from sglang_rksc.rlkv import launch_checks
    from sglang_rksc.rlkv.head_mask import HeadScores

    scores = HeadScores("m", 6, 2, 16, 64, [[float(2 * layer + head) for head in range(2)] for layer in range(6)])
    first, again, other = scores.shuffled(0), scores.shuffled(0), scores.shuffled(1)
    assert first == again and first.scores != other.scores and first.scores != scores.scores
    assert sorted(x for row in first.scores for x in row) == list(range(12))  # a permutation of the scores
    assert sum(map(sum, first.compressed_heads(0.5))) == 6 and first.command.startswith("random:0 of")
    # the launcher deals the model's shipped file and hands the scheduler the dealt copy
    path = tmp_path / "shipped.json"
    scores.save(path)
    monkeypatch.setattr(launch_checks, "shipped_for", lambda model_path, packaged: path)
    folder = _model_folder(tmp_path, layers=6)
    dealt = resolve(RkscConfig(heads=HeadCompressionSettings(sparsity=0.5, head_mask="random:1")), folder, [])
    assert HeadScores.load(Path(dealt.heads.head_mask)) == other
    with pytest.raises(ValueError, match="must be a whole number"):
        resolve(RkscConfig(heads=HeadCompressionSettings(sparsity=0.5, head_mask="random:x")), folder, [])


@pytest.mark.parametrize(
    ("name", "layers", "kv_heads"),
    [("smollm2-135m", 30, 3), ("qwen2.5-coder-1.5b", 28, 2), ("qwen2.5-coder-0.5b", 24, 2)],
)
def test_every_named_model_ships_a_head_mask_of_its_shape(name, layers, kv_heads):
    from sglang_rksc.rlkv.head_mask import HeadScores, packaged
    from sglang_rksc.runtime import models

    assert name in models.MODELS
    scores = HeadScores.load(packaged(name))
    assert (scores.model, scores.num_layers, scores.num_kv_heads) == (name, layers, kv_heads)
    assert scores.command.startswith("python -m sglang_rksc.rlkv.calibrate") and "GSM8K 0-" in scores.traces
    assert len({v for row in scores.scores for v in row}) > 1  # measured, not a constant
