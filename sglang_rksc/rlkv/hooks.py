"""Head compression's SGLang hooks beside the window bookkeeping (`windows`); `srt.seams` installs them,
only when `--rksc-head-compression` is above 0.

- the pool: the platform's `get_kv_pool_cls` returns `HeadSplitKVPool`, configured with the layout, for MHA
  models;
- the capacity: `--max-total-tokens` keeps meaning the bytes of that many uncompressed tokens, so the pool gets
  more token slots (`capacity_scale`);
- the attention: the `torch_native` factory builds `HeadSplitAttnBackend` over a head-split pool.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from sglang_rksc.config import HeadCompressionSettings, RkscConfig
from sglang_rksc.rlkv.head_mask import HeadScores
from sglang_rksc.rlkv.layout import HeadLayout

logger = logging.getLogger(__name__)


@cache
def layout_of(settings: HeadCompressionSettings) -> HeadLayout:
    """The compressed heads at the configured sparsity, from the head-scores file (read once per process)."""
    scores = HeadScores.load(settings.head_mask)
    return HeadLayout.of(scores.compressed_heads(settings.sparsity), settings.sink, settings.window)


def capacity_scale(layout: HeadLayout, window_fraction: float) -> float:
    """Token slots per uncompressed token of KV bytes: a token slot costs the full heads, and each
    brings `window_fraction` window slots of the compressed heads."""
    total = layout.num_layers * layout.num_kv_heads
    compressed = layout.compressed_count
    return total / ((total - compressed) + window_fraction * compressed)


@cache
def _pool_class(settings: HeadCompressionSettings) -> type:
    from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool

    layout = layout_of(settings)
    logger.info(
        "sglang-rksc: head compression: %d of %d KV heads keep sink %d + window %d; %.2fx token slots per byte",
        layout.compressed_count,
        layout.num_layers * layout.num_kv_heads,
        layout.sink,
        layout.window,
        capacity_scale(layout, settings.window_pool),
    )
    return HeadSplitKVPool.configured(layout, settings.window_pool)


def pool_class(original: Any, platform: Any, *, kind: Any) -> Any:
    """AROUND hook of `SRTPlatform.get_kv_pool_cls`."""
    chosen = original(platform, kind=kind)
    if kind != "mha":  # the launcher admits only architectures with MHA/GQA pools
        return chosen
    if chosen is not None:
        raise ValueError(f"head compression cannot replace this platform's own KV pool {chosen.__name__}")
    return _pool_class(RkscConfig.current().heads)


def capacity(original: Any, configurator: Any, token_capacity: int) -> int:
    """AROUND hook of `KVCacheConfigurator._apply_token_constraints`: a user's `--max-total-tokens` counts
    uncompressed tokens' bytes."""
    from sglang.srt.runtime_context import get_schedule

    capped = original(configurator, token_capacity)
    user_limit = get_schedule().max_total_tokens
    if user_limit is None:
        return capped
    settings = RkscConfig.current().heads
    return min(token_capacity, int(user_limit * capacity_scale(layout_of(settings), settings.window_pool)))


def torch_native_backend(torch_native: Any) -> Any:
    """The `torch_native` attention factory: ours over a head-split pool, SGLang's (`torch_native`) otherwise."""

    def attention(runner: Any) -> Any:
        from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool

        if isinstance(runner.token_to_kv_pool, HeadSplitKVPool):
            from sglang_rksc.rlkv.attention import HeadSplitAttnBackend

            return HeadSplitAttnBackend(runner)
        return torch_native(runner)

    return attention
