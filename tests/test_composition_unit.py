"""How ASKS, head compression and packets compose, without a server: a fork goes only where a request can
continue from its donor's end under the cache's limits, a packet position the request keeps a window for is
copied only with its window, and the head-split attention over copied positions reads only KV that exists."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_rksc.cache.feature import CacheFeature
from sglang_rksc.config import RkscConfig, SemanticSettings
from sglang_rksc.kernels.sink_window import head_split_attention
from sglang_rksc.packets.reuse import QUERY_ATTR, PacketReuse
from sglang_rksc.rlkv.attention import HeadSplitAttnBackend, MissingWindowKV
from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool
from sglang_rksc.rlkv.layout import HeadLayout
from sglang_rksc.wire import Meta
from tests.pool_harness import PoolHarness

X = list(range(10, 22))
A = list(range(100, 121))
A2 = A[:7] + [300] + A[8:]
R = [50, 51, 52, 53, 54, 55]


class CutAt(CacheFeature):
    """A feature that lets no request continue past `limit` tokens (as head compression does where a
    donor's end window was given back)."""

    name = "cut"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def cut_match(self, req, slots):
        return min(int(slots.numel()), self.limit)


def _asks(limit: int | None) -> PoolHarness:
    config = RkscConfig(semantic=SemanticSettings(on=True, threshold=0.8, probe=False, min_span=4))
    extra = [] if limit is None else [lambda cache: CutAt(limit)]
    return PoolHarness(config, extra_features=extra)


@pytest.mark.usefixtures("sglang_context")
def test_a_fork_is_made_only_where_the_request_can_continue_from_the_donor():
    free = _asks(None)
    free.run(X, A)
    free.run(X, A2)  # deduplicated into an alias of A
    assert list(free.admit(X + A2[:-1] + R).origin_input_ids) == X + A[:-1] + R  # forked

    cut = _asks(len(X) + 10)  # the donor's end is out of reach
    cut.run(X, A)
    cut.run(X, A2)
    req = cut.admit(X + A2[:-1] + R)
    assert list(req.origin_input_ids) == X + A2[:-1] + R  # its own prompt, untouched
    (info,) = req.customized_info[Meta.SEMANTIC]
    assert info == {"fork": False, "skipped": "donor not reusable"}
    assert cut.asks.stats.forks_unreachable == 1 and cut.asks.stats.forks_alias == 0
    assert req.prefix_len <= len(X) + 10  # and its own match obeys the cut too
    cut.finish(req)
    cut.check()


def test_a_position_kept_for_a_window_is_copied_only_with_its_window():
    pool = SimpleNamespace(has_window=lambda slots: slots % 2 == 0)  # even slots hold a window slot
    allocator = SimpleNamespace(get_kvcache=lambda: pool)
    reuse = PacketReuse(SimpleNamespace(token_to_kv_pool_allocator=allocator), shift=None)
    source = torch.tensor([2, 3, 4, 5])
    target = torch.tensor([10, 12, 13, 15])  # windows at 10 and 12 (kept), none at 13 and 15
    # 10 <- 2: both have windows; 12 <- 3: the request needs a window the source lost -> computed;
    # 13 and 15 keep no window: copied whatever the source holds
    assert reuse._copyable(source, target).tolist() == [True, False, True, True]
    plain = PacketReuse(SimpleNamespace(token_to_kv_pool_allocator=SimpleNamespace(get_kvcache=lambda: None)), None)
    assert plain._copyable(source, target).all()


LAYERS, KV_HEADS, Q_HEADS, DIM, SINK, WINDOW = 2, 2, 4, 8, 2, 4
MASK = [[False, True], [True, False]]


@pytest.fixture
def split_pool(sglang_context) -> HeadSplitKVPool:
    cls = HeadSplitKVPool.configured(HeadLayout.of(MASK, SINK, WINDOW), 0.5)
    return cls(64, 1, torch.float32, head_num=KV_HEADS, head_dim=DIM, layer_num=LAYERS, device="cpu",
               enable_memory_saver=False)  # fmt: skip


def test_attention_over_copied_positions_reads_only_kv_that_exists(split_pool):
    """A prefix of 6 (stored, windows kept), positions 6-15 copied from packets (only 14 and 15 brought
    their compressed heads), 16-19 computed. Full heads see every position; compressed heads see the sinks
    and the window of each query among what exists."""
    torch.manual_seed(3)
    seq_len, prefix, first_computed = 20, 6, 16
    req_to_token = torch.zeros((2, 32), dtype=torch.long)
    slots = torch.arange(20, 20 + seq_len)
    req_to_token[1, :seq_len] = slots
    pos = torch.arange(seq_len)
    has_window = (pos < prefix) | (pos >= 14)
    split_pool.keep_windows(slots[has_window])
    backend = object.__new__(HeadSplitAttnBackend)
    backend.pool, backend.sink, backend.window, backend.decode_kernel = split_pool, SINK, WINDOW, False
    backend.req_to_token_pool = SimpleNamespace(req_to_token=req_to_token)
    q = torch.randn(seq_len, Q_HEADS * DIM)
    k, v = torch.randn(seq_len, KV_HEADS * DIM), torch.randn(seq_len, KV_HEADS * DIM)
    where = torch.arange(first_computed, seq_len)
    for layer_id in range(LAYERS):
        layer = SimpleNamespace(
            layer_id=layer_id, tp_q_head_num=Q_HEADS, tp_k_head_num=KV_HEADS, qk_head_dim=DIM, v_head_dim=DIM,
            scaling=DIM**-0.5, is_cross_attention=False, sliding_window_size=None,
        )  # fmt: skip
        split_pool.set_kv_buffer(layer, slots[:first_computed], k[:first_computed], v[:first_computed])
        batch = SimpleNamespace(
            out_cache_loc=slots[first_computed:], req_pool_indices=torch.tensor([1]), seq_lens=torch.tensor([seq_len]),
            extend_prefix_lens=torch.tensor([prefix]), extend_seq_lens_cpu=[seq_len - first_computed],
            sampling_info=SimpleNamespace(**{QUERY_ATTR: [where]}),
        )  # fmt: skip
        out = backend.forward_extend(q[where], k[where], v[where], layer, batch).view(-1, Q_HEADS, DIM)

        def reference(keys: torch.Tensor, layer_id: int = layer_id) -> torch.Tensor:
            qs, ks, vs = (x.view(seq_len, -1, DIM).movedim(0, 1) for x in (q, k, v))
            compressed = torch.tensor(MASK[layer_id])
            return head_split_attention(
                qs[:, where], ks[:, keys], vs[:, keys], where, keys, compressed, SINK, WINDOW, DIM**-0.5
            ).movedim(0, 1)

        full = reference(pos)  # every position: what the full heads see
        existing = reference(pos[has_window | (pos >= first_computed)])  # the compressed heads' view
        compressed_q = torch.tensor(MASK[layer_id]).repeat_interleave(Q_HEADS // KV_HEADS)
        expected = torch.where(compressed_q[None, :, None], existing, full)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # a missing position of the matched prefix (a sink here) is a bug upstream: refused, not skipped
    split_pool.drop_windows(slots[[1]])
    with pytest.raises(MissingWindowKV):
        backend.forward_extend(q[where], k[where], v[where], layer, batch)


def test_packets_carry_window_heads_turned_with_their_keys(split_pool):
    source, target = torch.tensor([3, 4, 5]), torch.tensor([30, 31, 32])
    split_pool.keep_windows(torch.tensor([3, 4, 30, 32]))  # 5 lost its window; 31 keeps none
    for i in range(LAYERS):
        split_pool.window_k[i].normal_()
        split_pool.window_v[i].normal_()
    cos, sin = torch.arange(3.0)[:, None], torch.ones(3, 1)
    turned = split_pool.copy_window_heads(
        source, target, cos, sin, lambda keys, c, s: keys * c[:, :, None] + s[:, :, None]
    )
    assert turned == 1  # only 30 <- 3: 31 keeps no window, 5 has none to give
    for i in range(LAYERS):
        at, frm = split_pool.window_slot[30], split_pool.window_slot[3]
        torch.testing.assert_close(split_pool.window_k[i][at], split_pool.window_k[i][frm] * 0.0 + 1.0)
        torch.testing.assert_close(split_pool.window_v[i][at], split_pool.window_v[i][frm])
