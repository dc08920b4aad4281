"""Sink + recent-window attention, the torch reference every other path is compared against.

A compressed KV head lets a query at position p see the keys at positions k < `sink` and those with
p - window < k <= p (the query's own included); a full head sees every k <= p.
"""

from __future__ import annotations

import torch


def sink_window_keep(q_pos: torch.Tensor, k_pos: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """[len(q_pos), len(k_pos)] bool: which keys a compressed head's query sees (causal, sinks, window)."""
    assert sink >= 0 and window >= 1, (sink, window)
    causal = k_pos[None, :] <= q_pos[:, None]
    recent = (q_pos[:, None] - k_pos[None, :]) < window
    return causal & (recent | (k_pos[None, :] < sink))


def stored_window_positions(prefix_len: int, sink: int, window: int) -> torch.Tensor:
    """Positions before `prefix_len` a compressed head's queries from `prefix_len` on may still see."""
    sinks = torch.arange(min(sink, prefix_len))
    recent = torch.arange(min(max(sink, prefix_len - window + 1), prefix_len), prefix_len)
    return torch.cat((sinks, recent))


def head_split_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    compressed: torch.Tensor,
    sink: int,
    window: int,
    scaling: float,
) -> torch.Tensor:
    """Causal attention of one sequence where the KV heads flagged in `compressed` see only sinks and window.

    q: [q_heads, q_len, d]; k, v: [kv_heads, k_len, d]; compressed: [kv_heads] bool. Query heads are grouped
    over KV heads as in GQA (q_heads // kv_heads consecutive query heads per KV head). Computed in float32.
    """
    q_heads, kv_heads = q.shape[0], k.shape[0]
    assert q_heads % kv_heads == 0 and compressed.shape == (kv_heads,), (q.shape, k.shape, compressed.shape)
    group = q_heads // kv_heads
    full_keep = k_pos[None, :] <= q_pos[:, None]
    window_keep = sink_window_keep(q_pos, k_pos, sink, window)
    keep = torch.where(compressed[:, None, None], window_keep[None], full_keep[None])  # [kv_heads, q, k]
    keep = keep.repeat_interleave(group, dim=0)
    k32 = k.float().repeat_interleave(group, dim=0)
    v32 = v.float().repeat_interleave(group, dim=0)
    scores = torch.matmul(q.float(), k32.transpose(1, 2)) * scaling
    scores = scores.masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v32).to(q.dtype)
