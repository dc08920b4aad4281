"""Decode attention over a head-split KV pool, one layer: a Triton kernel and its torch reference.

The pool (`sglang_rksc.rlkv.kv_pool`) keeps a compressed KV head's K and V only for a sequence's sinks and
recent window, in window slots reached by `window_slot[token slot]`. A decode query at position L - 1
sees positions [0, min(sink, L)) and [max(sink, L - window), L): at most sink + window keys, however long
the sequence. With `window=None` the same kernel reads every position straight from the token slots:
the full heads' decode.

Shapes (one layer, the batch's B requests):
  q [B, Hq, D]; k_buffer, v_buffer [N, Hkv, D] (window slots, or token slots with window=None);
  window_slot [token slots] (ignored with window=None); req_to_token [requests, max_len];
  req_pool_indices, seq_lens [B] (seq_lens include the new token, whose K and V are already stored).
  Query heads are grouped over KV heads as in GQA: Hq // Hkv consecutive query heads per KV head.
The reference runs on any device and is what the CPU path computes; the kernel needs Triton (a GPU, or
the interpreter with TRITON_INTERPRET=1, slow but exact enough for tests).
"""

from __future__ import annotations

import torch

from sglang_rksc.kernels.sink_window import stored_window_positions

from .lazy_triton import LazyKernel


def positions_seen(seq_len: int, sink: int, window: int | None) -> torch.Tensor:
    """Positions a decode query at seq_len - 1 attends to: the stored ones and its own."""
    if window is None:
        return torch.arange(seq_len)
    return torch.cat((stored_window_positions(seq_len - 1, sink, window), torch.tensor([seq_len - 1])))


def reference_decode(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    window_slot: torch.Tensor | None,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sink: int,
    window: int | None,
    scaling: float,
) -> torch.Tensor:
    """Per request: gather the K and V of the positions seen, softmax attention in float32."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_buffer.shape[1]
    for b, (row, seq_len) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist(), strict=True)):
        tokens = req_to_token[row, positions_seen(seq_len, sink, window).to(req_to_token.device)].long()
        rows = tokens if window is None else window_slot[tokens].long()
        if window is not None and bool((rows == 0).any()):
            raise ValueError(f"request {b} needs a position without a window slot")
        k = k_buffer[rows].float().repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v_buffer[rows].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].float(), k) * scaling
        out[b] = torch.einsum("hn,nhd->hd", torch.softmax(scores, dim=-1), v).to(q.dtype)
    return out


def triton_decode(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    window_slot: torch.Tensor | None,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sink: int,
    window: int | None,
    scaling: float,
    block_n: int = 64,
) -> torch.Tensor:
    """The same as `reference_decode`, one program per (request, KV head), online softmax over blocks of
    `block_n` keys; the double indirection (position -> token slot -> window slot) happens in the kernel."""
    import triton

    batch, q_heads, dim = q.shape
    kv_heads = k_buffer.shape[1]
    group = q_heads // kv_heads
    assert q_heads % kv_heads == 0 and dim == triton.next_power_of_2(dim), (q.shape, k_buffer.shape)
    assert k_buffer.stride(2) == 1 and v_buffer.stride(2) == 1 and q.stride(2) == 1
    out = torch.empty_like(q)
    if batch == 0:
        return out
    use_window = window is not None
    slot_map = window_slot if use_window else req_to_token  # any tensor: not read without a window
    _decode_kernel[(batch, kv_heads)](
        q, k_buffer, v_buffer, out, slot_map, req_to_token, req_pool_indices, seq_lens,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        out.stride(0), out.stride(1), req_to_token.stride(0), scaling,
        SINK=sink if use_window else 0, WINDOW=window if use_window else 1, USE_WINDOW=use_window,
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, D=dim,
    )  # fmt: skip
    return out


def _define_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        Q, K, V, Out, WindowSlot, ReqToToken, ReqIdx, SeqLens,
        stride_qb, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_ob, stride_oh, stride_rt,
        scaling,
        SINK: tl.constexpr, WINDOW: tl.constexpr, USE_WINDOW: tl.constexpr,
        GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        g = tl.program_id(1)
        seq_len = tl.load(SeqLens + b).to(tl.int64)
        row = tl.load(ReqIdx + b).to(tl.int64)
        if USE_WINDOW:
            n_sink = tl.minimum(seq_len, SINK)
            w_start = tl.maximum(seq_len - WINDOW, SINK)
            w_start = tl.minimum(w_start, seq_len)
        else:
            n_sink = seq_len * 0
            w_start = seq_len * 0
        n_total = n_sink + seq_len - w_start
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, D)
        h_mask = offs_h < GROUP
        q_ptrs = Q + b * stride_qb + (g * GROUP + offs_h)[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=h_mask[:, None], other=0.0)
        m_i = tl.full((BLOCK_H,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_H,), tl.float32)
        acc = tl.zeros((BLOCK_H, D), tl.float32)
        for start in range(0, n_total, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_mask = n < n_total
            pos = tl.where(n < n_sink, n, w_start + n - n_sink)
            tok = tl.load(ReqToToken + row * stride_rt + pos, mask=n_mask, other=0).to(tl.int64)
            if USE_WINDOW:
                slot = tl.load(WindowSlot + tok, mask=n_mask, other=0).to(tl.int64)
            else:
                slot = tok
            k = tl.load(
                K + slot[:, None] * stride_kn + g * stride_kh + offs_d[None, :], mask=n_mask[:, None], other=0.0
            )
            s = tl.dot(q, tl.trans(k)) * scaling
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            v = tl.load(
                V + slot[:, None] * stride_vn + g * stride_vh + offs_d[None, :], mask=n_mask[:, None], other=0.0
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new
        o = acc / l_i[:, None]
        o_ptrs = Out + b * stride_ob + (g * GROUP + offs_h)[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(Out.dtype.element_ty), mask=h_mask[:, None])

    return kernel


_decode_kernel = LazyKernel(_define_kernel)
