"""The embedding of a generated span, as it travels in a response's meta_info (`rksc_span`).

The server pools the hidden states its forwards already captured for the
output's KV slots (no extra forward) and sends one flat float16 vector whose
plain dot product with another is their similarity: a unit vector for
`--rksc-pooling last`; for `layers`, each layer's unit vector scaled by the
square root of its weight, so the dot product is the weighted mean of the
per-layer cosines the cache itself uses. The frontend decodes it with the
standard library only (no torch, no SGLang server imports).
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from sglang_rksc.wire import Meta, SpanEntry, meta_entry

META_KEY = Meta.SPAN
DTYPE = "float16"


def encode(embedding: Any, weights: Any = None, *, tokens: int) -> SpanEntry:
    """meta_info entry for a pooled span embedding ([H], or [L, H] with layer weights [L])."""
    import torch

    vector = embedding.float()
    if vector.dim() == 2:
        assert weights is not None and weights.shape[0] == vector.shape[0], (vector.shape, weights)
        vector = vector * weights.float().sqrt().unsqueeze(1).to(vector.device)
    flat = vector.reshape(-1).to("cpu", torch.float16)
    return {"vector": base64.b64encode(flat.numpy().tobytes()).decode("ascii"), "dtype": DTYPE, "tokens": tokens}


def entry(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The `rksc_span` entry of a generation's meta_info (None from servers that send none)."""
    return meta_entry(meta, META_KEY)


def decode(info: Mapping[str, Any]) -> list[float]:
    """The vector of an `rksc_span` entry; ValueError if it is not one."""
    if not isinstance(info, Mapping) or info.get("dtype") != DTYPE or not isinstance(info.get("vector"), str):
        raise ValueError(f"not an {META_KEY} entry: {info!r:.80}")
    raw = base64.b64decode(info["vector"], validate=True)
    if len(raw) % 2:
        raise ValueError(f"{META_KEY} vector has an odd byte count ({len(raw)})")
    return list(struct.unpack(f"<{len(raw) // 2}e", raw))


def similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """Dot product of two decoded vectors (their cosine, up to float16 rounding)."""
    if len(a) != len(b):
        raise ValueError(f"span vectors of different sizes: {len(a)} and {len(b)}")
    value = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return max(-1.0, min(1.0, value))
