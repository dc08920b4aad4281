"""Check the head-split decode kernel on a GPU against its torch reference, and time it.

Run on the device machine from the repository root: `python3 -m sglang_rksc.tools.gpu.check_sink_window`
(writes $OUT/sink_window_gpu.json). Qwen2.5-7B attention shapes (28 query / 4 KV heads, head dim 128,
bf16); half of a layer's KV heads compressed (2 KV heads, 14 query heads), sink 16 + window 64.
Needs torch and Triton only (not SGLang, not the package installed).
"""

from __future__ import annotations

import torch

from sglang_rksc.kernels.sink_window import head_split_attention  # torch only
from sglang_rksc.kernels.sink_window_decode import positions_seen, reference_decode, triton_decode
from sglang_rksc.tools.gpu.timing import run_check, timed

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run under TRITON_INTERPRET=1
DT = torch.bfloat16 if DEV == "cuda" else torch.float32  # the interpreter has no bf16 arithmetic
Q_HEADS, KV_HEADS, DIM, SINK, WINDOW = 14, 2, 128, 16, 64
SCALE = DIM**-0.5


def layout(seq_lens: list[int], compressed: bool, gen: torch.Generator):
    """Shuffled token slots per request; window slots for the positions seen (slot 0, none, holds NaN)."""
    rows, width = len(seq_lens), max(seq_lens)
    tokens = rows * width
    req_to_token = (torch.randperm(tokens, generator=gen) + 1).view(rows, width).int()
    window_slot = torch.zeros(tokens + 1, dtype=torch.long)
    if compressed:
        seen = torch.cat([req_to_token[r, positions_seen(n, SINK, WINDOW)].long() for r, n in enumerate(seq_lens)])
        window_slot[seen] = torch.arange(1, seen.numel() + 1)
    n_rows = int(window_slot.max()) + 1 if compressed else tokens + 1
    k = torch.randn(n_rows, KV_HEADS, DIM, generator=gen).to(DT)
    v = torch.randn(n_rows, KV_HEADS, DIM, generator=gen).to(DT)
    k[0] = v[0] = float("nan")
    q = torch.randn(rows, Q_HEADS, DIM, generator=gen).to(DT)
    idx = torch.arange(rows, dtype=torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return [t.to(DEV) for t in (q, k, v, window_slot, req_to_token, idx, lens)]


def check_correctness(gen: torch.Generator) -> dict:
    seq_lens = [1, 2, 15, 16, 17, 64, 79, 80, 81, 200, 1000, 4097] + torch.randint(
        1, 6000, (20,), generator=gen
    ).tolist()
    out = {}
    for compressed in (True, False):
        q, k, v, ws, r2t, idx, lens = layout(seq_lens, compressed, gen)
        window = WINDOW if compressed else None
        ref = reference_decode(q, k, v, ws, r2t, idx, lens, SINK, window, SCALE).float()
        got = triton_decode(q, k, v, ws, r2t, idx, lens, SINK, window, SCALE).float()
        err = (got - ref).abs().max().item()
        out["compressed" if compressed else "full"] = {"max_abs_err": err, "nan": bool(got.isnan().any())}
        assert not got.isnan().any() and err < 2e-2, (compressed, err)
    # The kernel reference against the project's attention reference (what the CPU server computes).
    q, k, v, ws, r2t, idx, lens = layout([300, 81], True, gen)
    for b, n in enumerate(lens.tolist()):
        tokens = r2t[b, :n].long()
        full_k = torch.zeros(n, KV_HEADS, DIM, device=DEV, dtype=DT)
        full_v = torch.zeros_like(full_k)
        held = ws[tokens] > 0
        full_k[held], full_v[held] = k[ws[tokens][held]], v[ws[tokens][held]]
        expected = head_split_attention(
            q[b][:, None], full_k.movedim(0, 1), full_v.movedim(0, 1), torch.tensor([n - 1], device=DEV),
            torch.arange(n, device=DEV), torch.ones(KV_HEADS, dtype=torch.bool, device=DEV), SINK, WINDOW, SCALE,
        )[:, 0].float()  # fmt: skip
        got = triton_decode(q, k, v, ws, r2t, idx, lens, SINK, WINDOW, SCALE)[b].float()
        out[f"project_reference_len{n}"] = (got - expected).abs().max().item()
        assert out[f"project_reference_len{n}"] < 2e-2
    return out


def time_one(batch: int, seq_len: int, gen: torch.Generator) -> dict:
    """One shape: the kernel on compressed heads, on the same heads uncompressed, and SDPA on contiguous K/V."""
    lens = [seq_len] * batch
    qc, kc, vc, wsc, r2tc, idx, lens_t = layout(lens, True, gen)
    qf, kf, vf, wsf, r2tf, _, _ = layout(lens, False, gen)
    kf[0] = vf[0] = 0
    kd = kf[1:].view(batch, seq_len, KV_HEADS, DIM).transpose(1, 2).contiguous()
    vd = vf[1:].view(batch, seq_len, KV_HEADS, DIM).transpose(1, 2).contiguous()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    return {
        "batch": batch,
        "seq_len": seq_len,
        "window_us": timed(lambda: triton_decode(qc, kc, vc, wsc, r2tc, idx, lens_t, SINK, WINDOW, SCALE)),
        "full_us": timed(lambda: triton_decode(qf, kf, vf, wsf, r2tf, idx, lens_t, SINK, None, SCALE)),
        "sdpa_contiguous_us": timed(lambda: sdpa(qf[:, :, None], kd, vd, scale=SCALE, enable_gqa=True)),
    }


def timings(gen: torch.Generator) -> list[dict]:
    rows = []
    for batch in (1, 16, 64):
        for seq_len in (1024, 4096, 16384):
            rows.append(time_one(batch, seq_len, gen))
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    run_check("sink_window_gpu", {"correctness": lambda: check_correctness(gen)}, lambda: timings(gen), DEV)


if __name__ == "__main__":
    main()
