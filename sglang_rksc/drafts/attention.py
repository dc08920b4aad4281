"""Torch-native attention for SGLang's `TARGET_VERIFY` forward (it has none), on the CPU path.

A verify step of width w is, per request, w queries on top of its committed KV: the last token and its
drafts sit at positions `seq_len .. seq_len + w - 1` and see the committed prefix and, causally, each other.
SGLang's torch-native extend would compute it, but it attends a query for every position of the sequence
(O(length^2) per request and layer, whatever w); here each request's w queries attend its KV under a
causal mask by position (O(length x w)). `verify_attention` is also the torch reference a GPU kernel would
be checked against; on a GPU, SGLang's own backends run the verify step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention


def verify_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: list[int],
    committed: list[int],
    width: int,
    scaling: float | None,
) -> torch.Tensor:
    """`q` [rows * width, q_heads, dim] (row i's tokens at positions committed[i] ..) -> the same shape."""
    out = torch.empty_like(q)
    gqa = q.shape[1] != k_cache.shape[1]
    offsets = torch.arange(width, device=q.device)
    for row, (index, length) in enumerate(zip(req_pool_indices, committed, strict=True)):
        slots = req_to_token[index, : length + width]
        keys = k_cache[slots].movedim(0, 1).to(q.dtype)  # [kv_heads, length + width, dim]
        values = v_cache[slots].movedim(0, 1).to(q.dtype)
        queries = q[row * width : (row + 1) * width].movedim(0, 1)  # [q_heads, width, dim]
        visible = torch.arange(length + width, device=q.device).view(1, -1) <= (length + offsets).view(-1, 1)
        attended = scaled_dot_product_attention(
            queries.unsqueeze(0),
            keys.unsqueeze(0),
            values.unsqueeze(0),
            attn_mask=visible,
            scale=scaling,
            enable_gqa=gqa,
        ).squeeze(0)
        out[row * width : (row + 1) * width] = attended.movedim(0, 1)
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
    *args: Any,
    **kwargs: Any,
) -> Any:
    """AROUND hook on `TorchNativeAttnBackend.forward_extend`: a verify forward goes to `verify_attention`
    (a layer it does not cover, to SGLang's extend over a view of the batch as an extend after the committed
    lengths)."""
    if not forward_batch.forward_mode.is_target_verify():
        return original(backend, q, k, v, layer, forward_batch, save_kv_cache, *args, **kwargs)
    if not _plain(layer):
        return original(backend, q, k, v, layer, _VerifyView(forward_batch), save_kv_cache, *args, **kwargs)
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    pool = backend.token_to_kv_pool
    if save_kv_cache and k is not None and v is not None:
        pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, backend.swa_out_cache_loc), k, v)
    queries = q.view(-1, layer.tp_q_head_num, layer.qk_head_dim)
    out = verify_attention(
        queries,
        pool.get_key_buffer(layer.layer_id),
        pool.get_value_buffer(layer.layer_id),
        backend.req_to_token_pool.req_to_token,
        forward_batch.req_pool_indices.tolist(),
        forward_batch.seq_lens.tolist(),
        forward_batch.spec_info.draft_token_num,
        layer.scaling,
    )
    return out.view(-1, layer.tp_q_head_num * layer.v_head_dim)


class _VerifyView:
    """The forward batch, read as an extend of `width` tokens after each committed length."""

    def __init__(self, forward_batch: Any) -> None:
        self._batch = forward_batch
        committed = forward_batch.seq_lens
        self.extend_prefix_lens = committed
        self.extend_seq_lens = torch.full_like(committed, forward_batch.spec_info.draft_token_num)
        self.seq_lens = committed + forward_batch.spec_info.draft_token_num

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)


def _plain(layer: Any) -> bool:
    """Self-attention over the whole sequence, keys and values of one size (Llama, Qwen2)."""
    window = getattr(layer, "sliding_window_size", None)
    return not layer.is_cross_attention and (window is None or window < 0) and layer.qk_head_dim == layer.v_head_dim
