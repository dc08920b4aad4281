"""Prefill attention when some prompt positions are not computed (their KV was copied in).

SGLang's torch-native extend places a request's queries at the end of its sequence. Here each request's
queries sit at the positions it computes (`positions`), every other position of the sequence is read from the
KV cache, and the mask stays causal by position. With no positions given it is exactly the stock computation.
`extend_with_copied_positions` is the torch reference (the CPU path); on a GPU the same is computed by a Triton
kernel (`kernels/packet_extend.py`, checked against this reference on an H100).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention

from sglang_rksc.kernels.packet_extend import QueryLayout, triton_extend_with_copied_positions

KERNEL_ENV = "RKSC_PACKET_KERNELS"  # "1": the Triton kernels on any device (tests, under Triton's interpreter)
LAYOUT_ATTR = "rksc_query_layout"  # on a forward's sampling info: the kernel's query layout, built once


def use_kernels(device: torch.device) -> bool:
    """Whether packets' attention and copies go through the Triton kernels."""
    return device.type == "cuda" or os.environ.get(KERNEL_ENV) == "1"


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
    original: Any,
    backend: Any,
    q: Any,
    k: Any,
    v: Any,
    layer: Any,
    forward_batch: Any,
    save_kv_cache: bool = True,
    **kwargs: Any,
) -> Any:
    """AROUND hook on the torch-native (and, on a GPU, the Triton) backend's `forward_extend`: batches that
    copied packets take the path above."""
    from sglang_rksc.packets.reuse import QUERY_ATTR

    info = getattr(forward_batch, "sampling_info", None)
    positions = getattr(info, QUERY_ATTR, None)
    plain = layer.is_cross_attention or getattr(layer, "sliding_window_size", -1) not in (None, -1)
    if positions is None or plain or any(value is not None for value in kwargs.values()):  # sinks, score mods
        return original(backend, q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    pool = backend.token_to_kv_pool
    if save_kv_cache and k is not None and v is not None:
        loc = KVWriteLoc(forward_batch.out_cache_loc, getattr(backend, "swa_out_cache_loc", None))
        pool.set_kv_buffer(layer, loc, k, v)
    q_ = q.view(-1, layer.tp_q_head_num, layer.qk_head_dim)
    args = (
        q_,
        pool.get_key_buffer(layer.layer_id),
        pool.get_value_buffer(layer.layer_id),
        _req_to_token(backend),
        forward_batch.req_pool_indices,
        forward_batch.seq_lens,
        forward_batch.extend_seq_lens_cpu,
        positions,
        layer.scaling,
    )
    if use_kernels(q.device):
        out = triton_extend_with_copied_positions(*args, layout=_query_layout(info, forward_batch, positions, q.device))
    else:
        out = extend_with_copied_positions(*args)
    return out.reshape(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)


def _req_to_token(backend: Any) -> torch.Tensor:
    pool = getattr(backend, "req_to_token_pool", None)  # torch_native keeps the pool, triton its table
    return backend.req_to_token if pool is None else pool.req_to_token


def _query_layout(
    info: Any, forward_batch: Any, positions: list[torch.Tensor | None], device: torch.device
) -> QueryLayout:
    """The forward's query layout, built at its first layer (`hooks.computed_positions` clears it each forward)."""
    layout = getattr(info, LAYOUT_ATTR, None)
    if layout is None:
        seq_lens = getattr(forward_batch, "seq_lens_cpu", None)
        seq_lens = forward_batch.seq_lens.cpu() if seq_lens is None else seq_lens
        extend = forward_batch.extend_seq_lens_cpu
        layout = QueryLayout.build(seq_lens, extend, positions, device)
        setattr(info, LAYOUT_ATTR, layout)
    return layout
