"""Moving cached keys to other positions: RoPE is a rotation by position x frequency, so a key rotated for
position c becomes the key for position a by one more rotation, by a - c. Torch reference (CPU and GPU)."""

from __future__ import annotations

from typing import Any

import torch


class RopeShift:
    """The rotation of one model's rotary embedding (SGLang's `cos_sin_cache`: cos | sin per position)."""

    def __init__(self, cos_sin_cache: torch.Tensor, rotary_dim: int, head_dim: int, neox: bool) -> None:
        assert rotary_dim % 2 == 0 and rotary_dim <= head_dim
        cos, sin = cos_sin_cache.float().chunk(2, dim=-1)
        # A rotation keeps norms; a cache that scales them (YaRN's mscale) cannot be shifted this way.
        if not torch.allclose(cos * cos + sin * sin, torch.ones_like(cos), atol=1e-3):
            raise ValueError("this model's RoPE scales its cos/sin (e.g. YaRN); packets cannot move its keys")
        self.cos, self.sin = cos, sin
        self.rotary_dim, self.head_dim, self.neox = rotary_dim, head_dim, neox

    @classmethod
    def of_module(cls, rotary_emb: Any) -> RopeShift:
        """From SGLang's `RotaryEmbedding` module of the served model: its cache computed again in float32 (the
        module keeps it in the model's dtype on the CPU, too coarse to turn keys by)."""
        if getattr(rotary_emb, "position_start", 0):
            raise ValueError("packets cannot move keys of a RoPE whose positions do not start at 0")
        with torch.device("cpu"):
            cache = rotary_emb._compute_cos_sin_cache()
        live = getattr(rotary_emb, "cos_sin_cache", None)
        if isinstance(live, torch.Tensor):
            cache = cache.to(live.device)
        return cls(cache, rotary_emb.rotary_dim, rotary_emb.head_size, rotary_emb.is_neox_style)

    @classmethod
    def of_inverse_frequencies(cls, inv_freq: torch.Tensor, positions: int, head_dim: int) -> RopeShift:
        """From a NeoX-style RoPE's inverse frequencies (transformers' rotary modules keep them as `inv_freq`)."""
        angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq.float().cpu())
        return cls(torch.cat([angles.cos(), angles.sin()], dim=-1), 2 * inv_freq.numel(), head_dim, neox=True)

    @property
    def max_shift(self) -> int:
        return self.cos.shape[0] - 1

    def rotation(self, delta: torch.Tensor, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [tokens, rotary_dim / 2] (float32, on `device`) of turning by `delta` [tokens] positions
        (negative allowed): computed once for a copy, used by every layer."""
        magnitude = delta.abs().long().to(self.cos.device)
        assert magnitude.numel() == 0 or int(magnitude.max()) <= self.max_shift, "shift beyond the rotary cache"
        cos = self.cos[magnitude]
        sin = self.sin[magnitude] * torch.sign(delta.to(self.sin)).view(-1, 1)
        return cos.to(device), sin.to(device)

    def turn(self, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`keys` [tokens, heads, head_dim] turned by a `rotation`."""
        return turn_keys(keys, cos, sin, self.rotary_dim, self.neox)

    def shift(self, keys: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """`keys` [tokens, heads, head_dim] rotated for their cached positions, turned by `delta` [tokens]
        positions (negative allowed)."""
        return self.turn(keys, *self.rotation(delta, keys.device))


def turn_keys(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, neox: bool) -> torch.Tensor:
    """`keys` [tokens, heads, head_dim] turned by cos, sin [tokens, rotary_dim / 2]; computed in float32,
    returned in the keys' dtype. The torch reference of the copy kernel (`kernels/rope_copy.py`)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    k = keys.float()
    rot, rest = k[..., :rotary_dim], k[..., rotary_dim:]
    if neox:
        x1, x2 = rot.chunk(2, dim=-1)
        turned = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:  # interleaved pairs (GPT-J style)
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        turned = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    return torch.cat([turned, rest], dim=-1).to(keys.dtype)
