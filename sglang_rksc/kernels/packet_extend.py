"""Prefill attention when some prompt positions were copied in (packets), not computed: a Triton kernel.

Its torch reference is `sglang_rksc.packets.attention.extend_with_copied_positions`, what the CPU server
computes; this kernel takes the same arguments and returns the same output. Each request's computed tokens
(queries) sit at given positions of its sequence, every position of the sequence is read from the KV cache
through `req_to_token`, and a query at position p sees positions 0..p. One program per (request, block of
queries, KV head): its rows are the block's queries times the query heads that share that KV head, so each
key is read once per group; online softmax over blocks of `block_n` keys, up to the block's last position.

Shapes: q [tokens, Hq, D] (every request's computed tokens, in order); k_cache, v_cache [slots, Hkv, D];
req_to_token [requests, max_len]; req_pool_indices, seq_lens [B]; extend_seq_lens: B counts; positions: per
request the positions it computes, ascending (None: the last extend_seq_lens[b] positions, the stock case).
D must be a power of two. Runs on a GPU, or on the CPU under TRITON_INTERPRET=1 (slow; for tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lazy_triton import LazyKernel


def query_positions(
    seq_lens: torch.Tensor, extend_seq_lens: list[int], positions: list[torch.Tensor | None]
) -> torch.Tensor:
    """Every computed token's position in its sequence, requests one after another."""
    pieces = []
    for row, count in enumerate(extend_seq_lens):
        where = positions[row]
        if where is None:
            seq_len = int(seq_lens[row])
            where = torch.arange(seq_len - count, seq_len)
        assert len(where) == count, (row, len(where), count)
        pieces.append(where.to(torch.int32).cpu())
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int32)


@dataclass(frozen=True)
class QueryLayout:
    """Where a batch's queries sit, on the device: built once per forward, read by every layer's launch."""

    positions: torch.Tensor  # [tokens] int32
    starts: torch.Tensor  # [B] int32: each request's first query in q
    counts: torch.Tensor  # [B] int32
    max_count: int

    @classmethod
    def build(
        cls,
        seq_lens: torch.Tensor,
        extend_seq_lens: list[int],
        positions: list[torch.Tensor | None],
        device: torch.device,
    ) -> QueryLayout:
        counts = torch.tensor(extend_seq_lens, dtype=torch.int32)
        starts = (torch.cumsum(counts, 0) - counts).to(torch.int32)
        where = query_positions(seq_lens, extend_seq_lens, positions)
        return cls(where.to(device), starts.to(device), counts.to(device), max(extend_seq_lens, default=0))


def triton_extend_with_copied_positions(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_seq_lens: list[int],
    positions: list[torch.Tensor | None],
    scaling: float | None,
    layout: QueryLayout | None = None,
    block_rows: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
) -> torch.Tensor:
    """The reference's output; `layout` (from `QueryLayout.build` on the same arguments) saves rebuilding it.
    A program's `block_rows` rows are block_rows // group queries x the group's query heads, which share their
    KV head: each key block is read once for the whole group."""
    import triton

    tokens, q_heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    assert q_heads % kv_heads == 0 and dim == triton.next_power_of_2(dim), (q.shape, k_cache.shape)
    assert q.stride(2) == 1 and k_cache.stride(2) == 1 and v_cache.stride(2) == 1
    assert sum(extend_seq_lens) == tokens, (sum(extend_seq_lens), tokens)
    out = torch.empty_like(q)
    if tokens == 0:
        return out
    if layout is None:
        layout = QueryLayout.build(seq_lens, extend_seq_lens, positions, q.device)
    group = q_heads // kv_heads
    per_block = block_rows // group  # queries per program
    assert per_block >= 1 and block_rows == triton.next_power_of_2(block_rows), (block_rows, group)
    grid = (len(extend_seq_lens), triton.cdiv(layout.max_count, per_block), kv_heads)
    _extend_kernel[grid](
        q, k_cache, v_cache, out, layout.positions, layout.starts, layout.counts, req_to_token,
        req_pool_indices, seq_lens,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), req_to_token.stride(0),
        (dim**-0.5 if scaling is None else scaling) * _LOG2E,
        GROUP=group, QUERIES=per_block, BLOCK_R=block_rows, BLOCK_N=block_n, D=dim, num_warps=num_warps,
    )  # fmt: skip
    return out


_LOG2E = 1.4426950408889634  # the kernel works in base 2 (exp2), its scores pre-scaled by log2(e)


def _define_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        Q, K, V, Out, QPos, QStart, QCount, ReqToToken, ReqIdx, SeqLens,
        stride_qt, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_ot, stride_oh, stride_rt,
        scaling,
        GROUP: tl.constexpr, QUERIES: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        block = tl.program_id(1)
        kv_h = tl.program_id(2)
        count = tl.load(QCount + b)
        if block * QUERIES >= count:
            return
        start = tl.load(QStart + b).to(tl.int64)
        row = tl.load(ReqIdx + b).to(tl.int64)
        seq_len = tl.load(SeqLens + b).to(tl.int64)
        r = tl.arange(0, BLOCK_R)  # row r: query r // GROUP of the block, head r % GROUP of the KV head's group
        offs_m = block * QUERIES + r // GROUP
        h = kv_h * GROUP + r % GROUP
        m_mask = (r < QUERIES * GROUP) & (offs_m < count)
        offs_d = tl.arange(0, D)
        # a padding row gets position 0: it sees key 0 and stays finite; it is never stored
        pos = tl.load(QPos + start + offs_m, mask=m_mask, other=0).to(tl.int64)
        q_ptrs = Q + (start + offs_m)[:, None] * stride_qt + h[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=m_mask[:, None])
        m_i = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_R,), tl.float32)
        acc = tl.zeros((BLOCK_R, D), tl.float32)
        last = tl.minimum(tl.max(pos, 0) + 1, seq_len)
        for key_start in range(0, last, BLOCK_N):
            n = key_start + tl.arange(0, BLOCK_N)
            n_mask = n < last
            slot = tl.load(ReqToToken + row * stride_rt + n, mask=n_mask, other=0).to(tl.int64)
            k = tl.load(K + slot[:, None] * stride_kn + kv_h * stride_kh + offs_d[None, :], mask=n_mask[:, None])
            s = tl.dot(q, tl.trans(k.to(q.dtype))) * scaling
            s = tl.where(n_mask[None, :] & (n[None, :] <= pos[:, None]), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            v = tl.load(V + slot[:, None] * stride_vn + kv_h * stride_vh + offs_d[None, :], mask=n_mask[:, None])
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        o = acc / l_i[:, None]
        o_ptrs = Out + (start + offs_m)[:, None] * stride_ot + h[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=m_mask[:, None])

    return kernel


_extend_kernel = LazyKernel(_define_kernel)
