"""Copying packets' KV within one layer, K turned to new positions: a Triton kernel.

Its torch reference is what the CPU server does (`sglang_rksc.packets.reuse.PacketReuse`):
`k[target] = turn_keys(k[source], cos, sin, ...); v[target] = v[source]` (`sglang_rksc.packets.rope_shift`).
On a GPU that is about a dozen small launches a layer, which cost more than the bytes they move; this kernel
is one launch a layer.

Shapes: k_cache, v_cache [slots, heads, D]; source, target [tokens] slots (int64); cos, sin [tokens, R / 2]
float32 (`RopeShift.rotation`), R = rotary_dim <= D. NeoX style turns pairs (j, j + R/2), GPT-J style pairs
(2j, 2j + 1); dims from R on are copied as they are. Source and target slots must not overlap (the server
copies from the tree's slots into a request's fresh ones). Runs on a GPU, or on the CPU under
TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch

from .lazy_triton import LazyKernel


def triton_copy_turned(
    k_cache: torch.Tensor, v_cache: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
    cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, neox: bool, block_t: int = 32,
) -> None:  # fmt: skip
    import triton

    tokens = source.numel()
    heads, dim = k_cache.shape[1], k_cache.shape[2]
    assert target.numel() == tokens and cos.shape == sin.shape == (tokens, rotary_dim // 2), (cos.shape, tokens)
    assert k_cache.stride(2) == 1 and v_cache.stride(2) == 1 and rotary_dim % 2 == 0 and rotary_dim <= dim
    if tokens == 0:
        return
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    half = rotary_dim // 2
    _copy_kernel[(triton.cdiv(tokens, block_t), heads)](
        k_cache, v_cache, source, target, cos, sin, tokens,
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        HALF=half, HALF_P2=triton.next_power_of_2(half), D=dim, D_P2=triton.next_power_of_2(dim),
        ROTARY=rotary_dim, NEOX=neox, BLOCK_T=block_t,
    )  # fmt: skip


def _define_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(
        K, V, Source, Target, Cos, Sin, tokens,
        stride_kn, stride_kh, stride_vn, stride_vh,
        HALF: tl.constexpr, HALF_P2: tl.constexpr, D: tl.constexpr, D_P2: tl.constexpr,
        ROTARY: tl.constexpr, NEOX: tl.constexpr, BLOCK_T: tl.constexpr,
    ):  # fmt: skip
        block = tl.program_id(0)
        h = tl.program_id(1)
        offs_t = block * BLOCK_T + tl.arange(0, BLOCK_T)
        t_mask = offs_t < tokens
        src = tl.load(Source + offs_t, mask=t_mask, other=0).to(tl.int64)
        dst = tl.load(Target + offs_t, mask=t_mask, other=0).to(tl.int64)
        j = tl.arange(0, HALF_P2)
        j_mask = t_mask[:, None] & (j[None, :] < HALF)
        if NEOX:
            first, second = j, j + HALF
        else:
            first, second = 2 * j, 2 * j + 1
        cos = tl.load(Cos + offs_t[:, None] * HALF + j[None, :], mask=j_mask, other=1.0)
        sin = tl.load(Sin + offs_t[:, None] * HALF + j[None, :], mask=j_mask, other=0.0)
        k_src = K + src[:, None] * stride_kn + h * stride_kh
        k_dst = K + dst[:, None] * stride_kn + h * stride_kh
        x1 = tl.load(k_src + first[None, :], mask=j_mask, other=0.0).to(tl.float32)
        x2 = tl.load(k_src + second[None, :], mask=j_mask, other=0.0).to(tl.float32)
        d = tl.arange(0, D_P2)
        rest_mask = t_mask[:, None] & (d[None, :] >= ROTARY) & (d[None, :] < D)
        rest = tl.load(k_src + d[None, :], mask=rest_mask)
        v = tl.load(V + src[:, None] * stride_vn + h * stride_vh + d[None, :], mask=t_mask[:, None] & (d[None, :] < D))
        tl.store(k_dst + first[None, :], (x1 * cos - x2 * sin).to(K.dtype.element_ty), mask=j_mask)
        tl.store(k_dst + second[None, :], (x2 * cos + x1 * sin).to(K.dtype.element_ty), mask=j_mask)
        tl.store(k_dst + d[None, :], rest, mask=rest_mask)
        tl.store(V + dst[:, None] * stride_vn + h * stride_vh + d[None, :], v, mask=t_mask[:, None] & (d[None, :] < D))

    return kernel


_copy_kernel = LazyKernel(_define_kernel)
