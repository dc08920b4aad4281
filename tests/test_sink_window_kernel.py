"""The decode kernel of the head-split pool (`kernels/sink_window_decode.py`): its torch reference agrees with
the project's attention reference, and the Triton kernel (run by Triton's interpreter on the CPU; on a GPU by
`sglang_rksc/tools/gpu/check_sink_window.py`) agrees with the reference and never reads a dropped position."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sglang_rksc.kernels import sink_window_decode as kernel
from sglang_rksc.kernels.sink_window import head_split_attention

SINK, WINDOW, DIM = 2, 5, 16
ROOT = Path(__file__).resolve().parent.parent


def _batch(seq_lens: list[int], q_heads: int, kv_heads: int, seed: int = 0):
    """Requests laid out in shuffled token slots; only the positions a decode query sees get window slots.
    Window slot 0 (no slot) holds NaN, so reading a dropped position poisons the output."""
    gen = torch.Generator().manual_seed(seed)
    tokens = 4 * max(seq_lens) * len(seq_lens)
    rows = len(seq_lens) + 1
    req_to_token = (torch.randperm(tokens, generator=gen)[: rows * max(seq_lens)] + 1).view(rows, -1).int()
    req_pool_indices = torch.randperm(rows, generator=gen)[: len(seq_lens)].int()
    window_slot = torch.zeros(tokens + 1, dtype=torch.long)
    for row, seq_len in zip(req_pool_indices.tolist(), seq_lens, strict=True):
        seen = req_to_token[row, kernel.positions_seen(seq_len, SINK, WINDOW)].long()
        window_slot[seen] = torch.arange(1, seen.numel() + 1) + int(window_slot.max())
    n_window = int(window_slot.max())

    def buffer(n: int) -> torch.Tensor:
        b = torch.randn(n + 1, kv_heads, DIM, generator=gen)
        b[0] = float("nan")
        return b

    q = torch.randn(len(seq_lens), q_heads, DIM, generator=gen)
    return q, req_to_token, req_pool_indices, torch.tensor(seq_lens, dtype=torch.int32), window_slot, buffer, n_window


@pytest.mark.parametrize("compressed", [True, False])
def test_the_reference_is_the_projects_attention_at_the_last_position(compressed: bool):
    q_heads, kv_heads = 6, 2
    q, req_to_token, req_idx, seq_lens, window_slot, buffer, _ = _batch([1, 4, 7, 8, 30], q_heads, kv_heads)
    k_all, v_all = (
        buffer(window_slot.numel()),
        buffer(window_slot.numel()),
    )  # per token slot; with compressed heads, copied to window slots
    held = window_slot > 0
    k_win = torch.zeros(int(window_slot.max()) + 1, kv_heads, DIM)
    v_win = torch.zeros_like(k_win)
    k_win[window_slot[held]], v_win[window_slot[held]] = k_all[:-1][held], v_all[:-1][held]
    window = WINDOW if compressed else None
    got = kernel.reference_decode(
        q, k_win if compressed else k_all, v_win if compressed else v_all, window_slot, req_to_token, req_idx,
        seq_lens, SINK, window, DIM**-0.5,
    )  # fmt: skip
    for b, (row, seq_len) in enumerate(zip(req_idx.tolist(), seq_lens.tolist(), strict=True)):
        slots = req_to_token[row, :seq_len].long()
        expected = head_split_attention(
            q[b][:, None], k_all[slots].movedim(0, 1), v_all[slots].movedim(0, 1), torch.tensor([seq_len - 1]),
            torch.arange(seq_len), torch.full((kv_heads,), compressed), SINK, WINDOW, DIM**-0.5,
        )[:, 0]  # fmt: skip
        torch.testing.assert_close(got[b], expected, rtol=1e-5, atol=1e-5)


def compare_triton_with_reference(q_heads: int, kv_heads: int, compressed: bool) -> None:
    """Run in a process started with TRITON_INTERPRET=1 (Triton reads it when it is imported)."""
    q, req_to_token, req_idx, seq_lens, window_slot, buffer, n_window = _batch([1, 2, 7, 8, 40, 131], q_heads, kv_heads)
    rows = n_window if compressed else window_slot.numel()
    k, v = buffer(rows), buffer(rows)
    if not compressed:  # every token slot may be read: none is NaN but the unused slot 0
        k[1:], v[1:] = torch.nan_to_num(k[1:]), torch.nan_to_num(v[1:])
    window = WINDOW if compressed else None
    args = (q, k, v, window_slot, req_to_token, req_idx, seq_lens, SINK, window, DIM**-0.5)
    expected = kernel.reference_decode(*args)
    got = kernel.triton_decode(*args, block_n=16)
    assert not got.isnan().any()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # a fresh Python under Triton's interpreter
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(6, 2), (4, 4)])
@pytest.mark.parametrize("compressed", [True, False])
def test_the_triton_kernel_matches_the_reference(q_heads: int, kv_heads: int, compressed: bool):
    pytest.importorskip("triton")
    call = f"compare_triton_with_reference({q_heads}, {kv_heads}, {compressed})"
    code = f"import tests.test_sink_window_kernel as t; t.{call}"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_reference_refuses_a_dropped_position():
    q, req_to_token, req_idx, seq_lens, window_slot, buffer, n_window = _batch([12], 2, 1)
    window_slot[req_to_token[req_idx[0], 11].long()] = 0  # the newest position lost its window slot
    with pytest.raises(ValueError, match="without a window slot"):
        kernel.reference_decode(
            q, buffer(n_window), buffer(n_window), window_slot, req_to_token, req_idx, seq_lens, SINK, WINDOW, 1.0
        )
