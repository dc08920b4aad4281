"""Prefill attention when some prompt positions are not computed (their KV was copied in): torch reference.

SGLang's torch-native extend places a request's queries at the end of its sequence. Here each request's
queries sit at the positions it computes (`positions`), every other position of the sequence is read from the
KV cache, and the mask stays causal by position. With no positions given it is exactly the stock computation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention


def extend_with_copied_positions(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_seq_lens: list[int],
    positions: list[torch.Tensor | None],
    scaling: float | None,
) -> torch.Tensor:
    """`q` [tokens, q_heads, dim] (the computed tokens of every request, in order) -> output of the same shape."""
    out = torch.empty_like(q)
    gqa = q.shape[1] != k_cache.shape[1]
    start = 0
    for row, count in enumerate(extend_seq_lens):
        seq_len = int(seq_lens[row])
        where = positions[row]
        if where is None:
            where = torch.arange(seq_len - count, seq_len)
        where = where.to(q.device)
        assert len(where) == count
        slots = req_to_token[req_pool_indices[row], :seq_len]
        keys = k_cache[slots].movedim(0, 1).to(q.dtype)  # [kv_heads, seq, dim]
        values = v_cache[slots].movedim(0, 1).to(q.dtype)
        queries = q.new_zeros((q.shape[1], seq_len, q.shape[2]))
        queries[:, where] = q[start : start + count].movedim(0, 1)
        full = scaled_dot_product_attention(
            queries.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0), is_causal=True, scale=scaling, enable_gqa=gqa
        ).squeeze(0)
        out[start : start + count] = full[:, where].movedim(0, 1)
        start += count
    return out


def forward_extend(
    original: Any, backend: Any, q: Any, k: Any, v: Any, layer: Any, forward_batch: Any, save_kv_cache: bool = True
) -> Any:
    """AROUND hook on `TorchNativeAttnBackend.forward_extend`: batches that copied packets take the path above."""
    from sglang_rksc.packets.reuse import QUERY_ATTR

    positions = getattr(getattr(forward_batch, "sampling_info", None), QUERY_ATTR, None)
    if positions is None or layer.is_cross_attention or getattr(layer, "sliding_window_size", -1) not in (None, -1):
        return original(backend, q, k, v, layer, forward_batch, save_kv_cache)
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    if save_kv_cache and k is not None and v is not None:
        backend.token_to_kv_pool.set_kv_buffer(
            layer, KVWriteLoc(forward_batch.out_cache_loc, backend.swa_out_cache_loc), k, v
        )
    q_ = q.view(-1, layer.tp_q_head_num, layer.qk_head_dim)
    out = extend_with_copied_positions(
        q_,
        backend.token_to_kv_pool.get_key_buffer(layer.layer_id),
        backend.token_to_kv_pool.get_value_buffer(layer.layer_id),
        backend.req_to_token_pool.req_to_token,
        forward_batch.req_pool_indices,
        forward_batch.seq_lens,
        forward_batch.extend_seq_lens_cpu,
        positions,
        layer.scaling,
    )
    return out.reshape(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)
