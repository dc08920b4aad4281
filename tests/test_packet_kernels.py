"""The Triton kernels of packets, run by Triton's interpreter on the CPU (on a GPU by
`sglang_rksc.tools.gpu.check_packet_extend`), compute what the CPU server's torch references compute: prefill
attention with copied positions (`kernels/packet_extend.py`), reading no slot beyond a sequence, and the copy that
turns K to new positions (`kernels/rope_copy.py`), writing only the target slots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sglang_rksc.kernels.packet_extend import query_positions
from sglang_rksc.packets.attention import extend_with_copied_positions
from sglang_rksc.packets.rope_shift import RopeShift, turn_keys

ROOT = Path(__file__).resolve().parent.parent
DIM = 16


def _batch(seq_lens: list[int], computed: list[torch.Tensor | None], q_heads: int, kv_heads: int, seed: int = 0):
    """Requests in shuffled slots of a pool whose slot 0 (what a row's tail points at) holds NaN."""
    gen = torch.Generator().manual_seed(seed)
    rows, width = len(seq_lens) + 1, max(seq_lens) + 7
    slots = rows * width
    req_to_token = (torch.randperm(slots, generator=gen) + 1).view(rows, width).int()
    req_pool_indices = torch.randperm(rows, generator=gen)[: len(seq_lens)].int()
    for row, seq_len in zip(req_pool_indices.tolist(), seq_lens, strict=True):
        req_to_token[row, seq_len:] = 0
    k = torch.randn(slots + 1, kv_heads, DIM, generator=gen)
    v = torch.randn(slots + 1, kv_heads, DIM, generator=gen)
    k[0] = v[0] = float("nan")
    counts = [len(c) if c is not None else 5 for c in computed]  # None: the last 5 positions
    q = torch.randn(sum(counts), q_heads, DIM, generator=gen)
    return q, k, v, req_to_token, req_pool_indices, torch.tensor(seq_lens), counts


def compare_triton_with_reference(q_heads: int, kv_heads: int, block: int) -> None:
    """Run in a process started with TRITON_INTERPRET=1 (Triton reads it when it is imported)."""
    from sglang_rksc.kernels.packet_extend import triton_extend_with_copied_positions

    seq_lens = [9, 70, 1, 133]
    computed = [
        torch.tensor([0, 3, 8]),  # a packet at 1-2, another at 4-7
        torch.cat([torch.arange(0, 10), torch.arange(40, 45), torch.tensor([69])]),
        torch.tensor([0]),  # a one-token prompt
        torch.cat([torch.arange(20, 90), torch.arange(120, 133)]),
    ]
    q, k, v, r2t, idx, lens, counts = _batch(seq_lens, computed, q_heads, kv_heads)
    args = (q, k, v, r2t, idx, lens, counts, computed, DIM**-0.5)
    expected = extend_with_copied_positions(*args)
    got = triton_extend_with_copied_positions(*args, block_rows=block, block_n=block)
    assert not got.isnan().any()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the stock case: no positions given, the queries are each request's last tokens
    stock = [None, None]
    q, k, v, r2t, idx, lens, counts = _batch([5, 40], stock, q_heads, kv_heads, seed=1)
    args = (q, k, v, r2t, idx, lens, counts, stock, DIM**-0.5)
    torch.testing.assert_close(triton_extend_with_copied_positions(*args, block_rows=block, block_n=block),
                               extend_with_copied_positions(*args), rtol=1e-4, atol=1e-4)  # fmt: skip


@pytest.mark.slow  # a fresh Python under Triton's interpreter
@pytest.mark.parametrize(("q_heads", "kv_heads", "block"), [(6, 2, 16), (4, 4, 32), (14, 2, 32)])
def test_the_attention_kernel_matches_the_torch_reference(q_heads: int, kv_heads: int, block: int):
    pytest.importorskip("triton")
    _interpreted(f"compare_triton_with_reference({q_heads}, {kv_heads}, {block})")


def test_query_positions_are_given_ones_or_each_sequences_last():
    where = query_positions(torch.tensor([10, 4]), [2, 3], [torch.tensor([3, 9]), None])
    assert where.tolist() == [3, 9, 1, 2, 3]
    with pytest.raises(AssertionError):
        query_positions(torch.tensor([10]), [3], [torch.tensor([3, 9])])


def compare_copy_with_reference(rotary_dim: int, neox: bool) -> None:
    """Run under TRITON_INTERPRET=1: the kernel's copy against `turn_keys` and indexing."""
    from sglang_rksc.kernels.rope_copy import triton_copy_turned

    gen = torch.Generator().manual_seed(3)
    slots, heads, tokens = 300, 3, 70
    k = torch.randn(slots, heads, DIM, generator=gen)
    v = torch.randn(slots, heads, DIM, generator=gen)
    order = torch.randperm(slots, generator=gen)
    source, target = order[:tokens], order[tokens : 2 * tokens]
    inv_freq = 1.0 / 10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
    shift = RopeShift.of_inverse_frequencies(inv_freq, 512, DIM)
    cos, sin = shift.rotation(torch.randint(-200, 200, (tokens,), generator=gen), "cpu")
    k_ref, v_ref = k.clone(), v.clone()
    k_ref[target] = turn_keys(k_ref[source], cos, sin, rotary_dim, neox)
    v_ref[target] = v_ref[source]
    triton_copy_turned(k, v, source, target, cos, sin, rotary_dim, neox, block_t=16)
    torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, v_ref, rtol=0, atol=0)


@pytest.mark.slow  # a fresh Python under Triton's interpreter
@pytest.mark.parametrize(("rotary_dim", "neox"), [(DIM, True), (DIM, False), (DIM // 2, True)])
def test_the_copy_kernel_matches_the_torch_reference(rotary_dim: int, neox: bool):
    pytest.importorskip("triton")
    _interpreted(f"compare_copy_with_reference({rotary_dim}, {neox})")


def _interpreted(call: str) -> None:
    """Triton reads TRITON_INTERPRET when it is imported: each comparison runs in a fresh process."""
    code = f"import tests.test_packet_kernels as t; t.{call}"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def compare_server_paths() -> None:
    """Run under TRITON_INTERPRET=1: the server's attention hook and packet copy give the same results through
    the kernels (the GPU path, forced by the environment variable) as through torch (the CPU path)."""
    from sglang_rksc.packets import attention, reuse
    from sglang_rksc.packets.reuse import QUERY_ATTR, PacketReuse

    q_heads, kv_heads, seq_lens = 4, 2, [30, 12]
    computed = [torch.cat([torch.arange(0, 6), torch.arange(20, 30)]), None]
    q, k, v, r2t, idx, lens, counts = _batch(seq_lens, computed, q_heads, kv_heads)
    pool = SimpleNamespace(get_key_buffer=lambda layer_id: k, get_value_buffer=lambda layer_id: v)
    backend = SimpleNamespace(token_to_kv_pool=pool, req_to_token_pool=SimpleNamespace(req_to_token=r2t))
    layer = SimpleNamespace(
        is_cross_attention=False, sliding_window_size=-1, tp_q_head_num=q_heads, qk_head_dim=DIM, v_head_dim=DIM,
        scaling=DIM**-0.5, layer_id=0,
    )  # fmt: skip

    def attend() -> torch.Tensor:
        info = SimpleNamespace(**{QUERY_ATTR: computed})
        batch = SimpleNamespace(
            sampling_info=info, req_pool_indices=idx, seq_lens=lens, seq_lens_cpu=lens, extend_seq_lens_cpu=counts
        )
        return attention.forward_extend(None, backend, q.flatten(1), None, None, layer, batch, save_kv_cache=False)

    def copy() -> torch.Tensor:
        keys, values = torch.randn(40, kv_heads, DIM), torch.randn(40, kv_heads, DIM)
        kv = SimpleNamespace(device="cpu", k_buffer=[keys, keys + 1], v_buffer=[values, values - 1])
        cache = SimpleNamespace(token_to_kv_pool_allocator=SimpleNamespace(get_kvcache=lambda: kv))
        inv_freq = 1.0 / 10000 ** (torch.arange(0, DIM, 2, dtype=torch.float32) / DIM)
        reuse = PacketReuse(cache, RopeShift.of_inverse_frequencies(inv_freq, 64, DIM))
        reuse._copy(torch.arange(3, 13), torch.arange(25, 35), torch.tensor([5] * 6 + [-3] * 4))
        return torch.cat(kv.k_buffer + kv.v_buffer)

    os.environ[attention.KERNEL_ENV] = "0"
    torch.manual_seed(0)
    by_torch = attend(), copy()
    calls: list[str] = []
    for module, name in ((attention, "triton_extend_with_copied_positions"), (reuse, "triton_copy_turned")):
        kernel = getattr(module, name)
        setattr(module, name, lambda *a, _k=kernel, _n=name, **kw: (calls.append(_n), _k(*a, **kw))[1])
    os.environ[attention.KERNEL_ENV] = "1"
    torch.manual_seed(0)
    by_kernels = attend(), copy()
    assert calls == ["triton_extend_with_copied_positions"] + ["triton_copy_turned"] * 2, calls
    torch.testing.assert_close(by_kernels[0], by_torch[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(by_kernels[1], by_torch[1], rtol=1e-5, atol=1e-5)
    assert not torch.equal(by_torch[1][25:35], by_torch[1][3:13])  # the copy turned K


@pytest.mark.slow  # a fresh Python under Triton's interpreter
def test_the_server_path_gives_the_same_through_the_kernels_as_through_torch():
    pytest.importorskip("triton")
    _interpreted("compare_server_paths()")
