"""How head compression enters SGLang: registered only when `--rksc-head-compression` is above 0.

- the pool: the platform's `get_kv_pool_cls` returns `HeadSplitKVPool` for MHA models;
- the capacity: `--max-total-tokens` keeps meaning the bytes of that many uncompressed tokens, so the
  pool gets more token slots (`capacity_scale`);
- the attention: the `torch_native` factory builds `HeadSplitAttnBackend` over a head-split pool;
- the window slots: `windows`' hooks on the batch allocations and on the allocator's `free`;
- their reservation: `windows`' hooks on prefill admission and on the decode capacity gate.
"""

from __future__ import annotations

import logging
from typing import Any

from sglang_rksc.config import HeadCompressionSettings
from sglang_rksc.rlkv.head_mask import HeadScores
from sglang_rksc.rlkv.layout import HeadLayout

logger = logging.getLogger(__name__)

_TARGETS = {
    "pool_class": "sglang.srt.platforms.interface.SRTPlatform.get_kv_pool_cls",
    "capacity": "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._apply_token_constraints",
    "alloc_extend": "sglang.srt.managers.schedule_batch.alloc_for_extend",
    "alloc_decode": "sglang.srt.managers.schedule_batch.alloc_for_decode",
    "free": "sglang.srt.mem_cache.allocator.token.TokenToKVPoolAllocator.free",
    "clear": "sglang.srt.mem_cache.allocator.token.TokenToKVPoolAllocator.clear",
    "admit": "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req",
    "decode_gate": "sglang.srt.mem_cache.allocator.token.TokenToKVPoolAllocator.check_decode_capacity",
}
_registered = False


def layout_of(settings: HeadCompressionSettings) -> HeadLayout:
    """The compressed heads at the configured sparsity, from the head-scores file."""
    scores = HeadScores.load(settings.head_mask)
    return HeadLayout.of(scores.compressed_heads(settings.sparsity), settings.sink, settings.window)


def capacity_scale(layout: HeadLayout, window_fraction: float) -> float:
    """Token slots per uncompressed token of KV bytes: a token slot costs the full heads, and each
    brings `window_fraction` window slots of the compressed heads."""
    total = layout.num_layers * layout.num_kv_heads
    compressed = layout.compressed_count
    return total / ((total - compressed) + window_fraction * compressed)


def register(settings: HeadCompressionSettings) -> None:
    """Install the pool, capacity, attention and window hooks (idempotent; nothing when sparsity is 0)."""
    global _registered
    if settings.sparsity <= 0 or _registered:
        return
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_rksc.rlkv import windows
    from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool

    layout = layout_of(settings)
    HeadSplitKVPool.layout = layout
    HeadSplitKVPool.window_fraction = settings.window_pool
    scale = capacity_scale(layout, settings.window_pool)

    def pool_class(original: Any, platform: Any, *, kind: Any) -> Any:
        chosen = original(platform, kind=kind)
        if kind != "mha":  # the launcher admits only architectures with MHA/GQA pools
            return chosen
        if chosen is not None:
            raise ValueError(f"head compression cannot replace this platform's own KV pool {chosen.__name__}")
        return HeadSplitKVPool

    def capacity(original: Any, configurator: Any, token_capacity: int) -> int:
        from sglang.srt.runtime_context import get_schedule

        capped = original(configurator, token_capacity)
        user_limit = get_schedule().max_total_tokens
        if user_limit is None:
            return capped
        return min(token_capacity, int(user_limit * scale))

    torch_native = ATTENTION_BACKENDS["torch_native"]

    def attention(runner: Any) -> Any:
        if isinstance(runner.token_to_kv_pool, HeadSplitKVPool):
            from sglang_rksc.rlkv.attention import HeadSplitAttnBackend

            return HeadSplitAttnBackend(runner)
        return torch_native(runner)

    HookRegistry.register(_TARGETS["pool_class"], pool_class, HookType.AROUND)
    HookRegistry.register(_TARGETS["capacity"], capacity, HookType.AROUND)
    HookRegistry.register(_TARGETS["alloc_extend"], windows.after_alloc_for_extend, HookType.AFTER)
    HookRegistry.register(_TARGETS["alloc_decode"], windows.after_alloc_for_decode, HookType.AFTER)
    HookRegistry.register(_TARGETS["free"], windows.free_with_windows, HookType.AROUND)
    HookRegistry.register(_TARGETS["clear"], windows.clear_windows, HookType.AFTER)
    HookRegistry.register(_TARGETS["admit"], windows.admit_with_windows, HookType.AROUND)
    HookRegistry.register(_TARGETS["decode_gate"], windows.decode_fits_windows, HookType.AROUND)
    register_attention_backend("torch_native")(attention)
    _registered = True
    logger.info(
        "sglang-rksc: head compression: %d of %d KV heads keep sink %d + window %d; %.2fx token slots per byte",
        layout.compressed_count,
        layout.num_layers * layout.num_kv_heads,
        layout.sink,
        layout.window,
        scale,
    )
