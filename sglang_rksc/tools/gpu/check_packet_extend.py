"""Check the packets' GPU kernels (prefill attention with copied positions, the copy that turns K) and the key
shift on a GPU against their torch references, and time them.

Run on the device machine from the repository root: `python3 -m sglang_rksc.tools.gpu.check_packet_extend`
(writes $OUT/packet_extend_gpu.json). Qwen2.5-7B attention shapes (28 query / 4 KV heads, head dim 128,
RoPE base 1e6, 28 layers, bf16). A gather prompt of S tokens of which 80% are copied packets: the kernel
computes the other 20% of the queries over all S keys; a full recompute runs causal flash attention over all
S queries; a copy turns the packets' K to their new positions and moves K and V, every layer.
Needs torch and Triton only (not SGLang, not the package installed).
"""

from __future__ import annotations

import torch

from sglang_rksc.kernels.packet_extend import QueryLayout, triton_extend_with_copied_positions
from sglang_rksc.kernels.rope_copy import triton_copy_turned
from sglang_rksc.packets.attention import extend_with_copied_positions  # torch only
from sglang_rksc.packets.rope_shift import RopeShift, turn_keys  # torch only
from sglang_rksc.tools.gpu.timing import run_check, timed

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run under TRITON_INTERPRET=1
DT = torch.bfloat16 if DEV == "cuda" else torch.float32
Q_HEADS, KV_HEADS, DIM, LAYERS, ROPE_BASE = 28, 4, 128, 28, 1e6
SCALE = DIM**-0.5
COPIED = 0.8


def gather_layout(batch: int, seq_len: int, gen: torch.Generator):
    """Shuffled slots; per request, 4 packets filling `COPIED` of the prompt after a question, the rest computed."""
    slots = batch * seq_len
    req_to_token = (torch.randperm(slots, generator=gen) + 1).view(batch, seq_len).int()
    k = torch.randn(slots + 1, KV_HEADS, DIM, generator=gen).to(DT)
    v = torch.randn(slots + 1, KV_HEADS, DIM, generator=gen).to(DT)
    question = int(seq_len * (1 - COPIED) / 2)
    packet = int(seq_len * COPIED / 4)
    computed = torch.ones(seq_len, dtype=torch.bool)
    for i in range(4):  # each packet followed by a few computed tokens (soft tokens, a separator)
        start = question + i * packet
        computed[start : start + packet - 8] = False
    where = torch.nonzero(computed).flatten()
    positions = [where.to(DEV)] * batch
    counts = [len(where)] * batch
    q = torch.randn(sum(counts), Q_HEADS, DIM, generator=gen).to(DT)
    lens = torch.full((batch,), seq_len, dtype=torch.int32)
    idx = torch.arange(batch, dtype=torch.int32)
    return q.to(DEV), k.to(DEV), v.to(DEV), req_to_token.to(DEV), idx.to(DEV), lens.to(DEV), counts, positions


def check_attention(gen: torch.Generator) -> dict:
    out = {}
    for batch, seq_len in ((1, 37), (3, 300), (2, 1500), (1, 4096)):
        q, k, v, r2t, idx, lens, counts, positions = gather_layout(batch, seq_len, gen)
        args = (q, k, v, r2t, idx, lens, counts, positions, SCALE)
        ref = extend_with_copied_positions(*args).float()
        got = triton_extend_with_copied_positions(*args).float()
        err = (got - ref).abs().max().item()
        out[f"{batch}x{seq_len}"] = {"max_abs_err": err, "nan": bool(got.isnan().any())}
        assert not got.isnan().any() and err < 3e-2, (batch, seq_len, err)
    return out


def rope_shift() -> RopeShift:
    inv_freq = 1.0 / ROPE_BASE ** (torch.arange(0, DIM, 2, dtype=torch.float32) / DIM)
    shift = RopeShift.of_inverse_frequencies(inv_freq, 32768, DIM)
    shift.cos, shift.sin = shift.cos.to(DEV), shift.sin.to(DEV)
    return shift


def check_shift(gen: torch.Generator) -> dict:
    """Keys rotated for positions c and shifted to a, against keys rotated for a directly (float64 RoPE)."""
    shift = rope_shift()
    raw = torch.randn(512, KV_HEADS, DIM, generator=gen, dtype=torch.float64)
    cached = torch.randint(0, 8000, (512,), generator=gen)
    target = torch.randint(0, 8000, (512,), generator=gen)

    def rope(keys: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # NeoX halves, in float64
        inv = 1.0 / ROPE_BASE ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM)
        angle = pos.double()[:, None, None] * inv
        x1, x2 = keys.chunk(2, dim=-1)
        return torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], dim=-1)

    stored = rope(raw, cached).to(DT).to(DEV)
    moved = shift.shift(stored, (target - cached).to(DEV)).double().cpu()
    expected = rope(raw, target)
    err = (moved - expected).abs().max().item()
    # the rounding of the stored dtype bounds it (bf16: ~8e-3 of a key's scale)
    assert err < (5e-2 if DT == torch.bfloat16 else 5e-3), err
    return {"max_abs_err": err, "dtype": str(DT)}


def check_copy(gen: torch.Generator) -> dict:
    """The copy kernel against the server's torch copy, on the pool's dtype."""
    shift = rope_shift()
    k = torch.randn(5000, KV_HEADS, DIM, generator=gen).to(DT).to(DEV)
    v = torch.randn(5000, KV_HEADS, DIM, generator=gen).to(DT).to(DEV)
    order = torch.randperm(5000, generator=gen).to(DEV)
    source, target = order[:2000], order[2000:4000]
    cos, sin = shift.rotation(torch.randint(-4000, 4000, (2000,), generator=gen), DEV)
    k_ref, v_ref = k.clone(), v.clone()
    k_ref[target] = turn_keys(k_ref[source], cos, sin, DIM, True)
    v_ref[target] = v_ref[source]
    triton_copy_turned(k, v, source, target, cos, sin, DIM, True)
    err = (k.float() - k_ref.float()).abs().max().item()
    assert err < 2e-2 and torch.equal(v, v_ref), err
    return {"k_max_abs_err": err, "v_equal": True}


def time_one(batch: int, seq_len: int, gen: torch.Generator, shift: RopeShift) -> dict:
    q, k, v, r2t, idx, lens, counts, positions = gather_layout(batch, seq_len, gen)
    args = (q, k, v, r2t, idx, lens, counts, positions, SCALE)
    layout = QueryLayout.build(lens.cpu(), counts, positions, q.device)
    computed = counts[0]
    copied = seq_len - computed
    # full recompute's attention: every position a query, K/V contiguous, causal flash attention
    qf = torch.randn(batch, Q_HEADS, seq_len, DIM, device=DEV, dtype=DT)
    kf = torch.randn(batch, KV_HEADS, seq_len, DIM, device=DEV, dtype=DT)
    vf = torch.randn_like(kf)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    # one layer's copy, as the server does it: one rotation for all layers, then per layer torch or the kernel
    source = r2t[:, :copied].flatten().long()
    target = torch.randperm(k.shape[0] - 1, device=DEV)[: source.numel()] + 1
    cos, sin = shift.rotation(torch.full((source.numel(),), 300), DEV)

    def copy_torch() -> None:
        k[target] = shift.turn(k[source], cos, sin)
        v[target] = v[source]

    row = {
        "batch": batch,
        "seq_len": seq_len,
        "computed_per_request": computed,
        "copied_per_request": copied,
        "layout_build_us": timed(lambda: QueryLayout.build(lens.cpu(), counts, positions, q.device), reps=10),
        "torch_reference_us": timed(lambda: extend_with_copied_positions(*args)),
        "full_causal_sdpa_us": timed(lambda: sdpa(qf, kf, vf, is_causal=True, scale=SCALE, enable_gqa=True)),
        "copy_layer_torch_us": timed(copy_torch),
        "copy_layer_kernel_us": timed(
            lambda: triton_copy_turned(k, v, source, target, cos, sin, shift.rotary_dim, shift.neox)
        ),
    }
    for rows, block_n, warps in ((64, 64, 4), (128, 64, 8), (128, 64, 4), (128, 32, 4), (256, 32, 8)):
        row[f"kernel_us_r{rows}_n{block_n}_w{warps}"] = timed(
            lambda br=rows, bn=block_n, w=warps: triton_extend_with_copied_positions(
                *args, layout=layout, block_rows=br, block_n=bn, num_warps=w
            )
        )
    return row


def timings(gen: torch.Generator) -> list[dict]:
    shift = rope_shift()
    rows = []
    for batch, seq_len in ((1, 1024), (1, 4096), (8, 1024), (8, 4096), (1, 16384)):
        rows.append(time_one(batch, seq_len, gen, shift))
        print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    run_check(
        "packet_extend_gpu",
        {"attention": lambda: check_attention(gen), "shift": lambda: check_shift(gen), "copy": lambda: check_copy(gen)},
        lambda: timings(gen),
        DEV,
    )


if __name__ == "__main__":
    main()
