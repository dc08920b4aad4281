"""The `rksc` radix-cache backend factory: runs inside the scheduler process.

Builds `RkscRadixCache` from SGLang's `TreeCacheBuildContext` and the
`--rksc-*` settings (`SGLANG_RKSC_CONFIG`). With semantic sharing or span
embeddings on it also creates the per-slot hidden-state store (and, for
semantic sharing, the input-embedding probe), and points the capture hooks at it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from sglang_rksc.cache import capture
from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.cache.radix_cache import RkscRadixCache
from sglang_rksc.config import RkscConfig

if TYPE_CHECKING:
    from sglang.srt.mem_cache.registry import TreeCacheBuildContext

logger = logging.getLogger(__name__)


def _why_no_semantic(ctx: TreeCacheBuildContext) -> str | None:
    if ctx.tp_size > 1:
        return "tensor parallelism (each rank would have to reach the same decision)"
    if ctx.params.page_size != 1:
        return "--page-size above 1"
    if ctx.is_hybrid_swa or ctx.is_hybrid_ssm:
        return "hybrid attention models"
    if ctx.disable_radix_cache:
        return "--disable-radix-cache"
    return None


def _with_packets(cache: RkscRadixCache, ctx: TreeCacheBuildContext) -> RkscRadixCache:
    """Give the cache its packet reuse (`--rksc-packets on`), turning keys with the served model's own RoPE."""
    if not cache.config.packets or cache.disable:
        return cache
    from pathlib import Path

    from sglang_rksc.packets.adapter import PacketAdapter
    from sglang_rksc.packets.launch_checks import AUTO_ADAPTER, NO_ADAPTER
    from sglang_rksc.packets.reuse import PacketReuse
    from sglang_rksc.packets.rope_shift import RopeShift

    model = ctx.tp_worker.model_runner.model
    rotary = model.model.layers[0].self_attn.rotary_emb
    choice = cache.config.packet_adapter
    # The launcher resolved 'auto' to a file or 'none'; a stock launch that did not is plain reuse.
    adapter = None if choice in (NO_ADAPTER, AUTO_ADAPTER) else PacketAdapter.load(Path(choice))
    cache.packets = PacketReuse(cache, RopeShift.of_module(rotary), adapter)
    logger.info(
        "sglang-rksc: packets on (marked prompt spans reuse cached KV, keys turned by RoPE), adapter: %s",
        choice if adapter is not None else "none (plain reuse)",
    )
    return cache


def build_tree_cache(ctx: TreeCacheBuildContext) -> RkscRadixCache:
    """Factory for `register_radix_cache_backend(BACKEND_NAME, ...)`."""
    return _with_packets(_build(ctx), ctx)


def _build(ctx: TreeCacheBuildContext) -> RkscRadixCache:
    config = RkscConfig.from_env()
    capture.deactivate()
    wants_states = config.semantic.on or config.span_embeddings
    if wants_states:
        why = _why_no_semantic(ctx)
        if why:
            logger.warning("sglang-rksc: semantic sharing and span embeddings are not supported with %s", why)
            off = dataclasses.replace(config.semantic, on=False)
            config = dataclasses.replace(config, semantic=off, span_embeddings=False)
            wants_states = False
    if not wants_states:
        return _logged(RkscRadixCache(ctx.params, config))

    settings = config.semantic
    model = ctx.tp_worker.model_runner.model
    device = next(model.parameters()).device
    allocator = ctx.params.token_to_kv_pool_allocator
    layers = None
    if settings.pooling == "layers":
        layers = capture.pooled_layer_indices(ctx.model_config.num_hidden_layers, settings.pooling_layers)
    # Slot 0 is the allocator's padding slot: one row more than its size.
    states = SlotStates(
        allocator.size + 1, ctx.model_config.hidden_size, num_layers=len(layers) if layers else 1, device=device
    )
    probe = TokenProbe(model.get_input_embeddings().weight) if settings.on and settings.probe else None
    capture.activate(states, model, layers)
    logger.info(
        "sglang-rksc: hidden states captured (semantic sharing %s, threshold %.3f, probe %s at %.3f, span "
        "embeddings %s, pooling %s%s, %.1f MiB of states)",
        "on" if settings.on else "off",
        settings.threshold,
        "on" if probe else "off",
        settings.probe_threshold,
        "on" if config.span_embeddings else "off",
        settings.pooling,
        f" {layers}" if layers else "",
        states.states.numel() * states.states.element_size() / 2**20,
    )
    cache = RkscRadixCache(ctx.params, config, states=states, probe=probe, context_len=ctx.model_config.context_len)
    return _logged(cache)


def _logged(cache: RkscRadixCache) -> RkscRadixCache:
    if cache.reuse is not None:
        logger.info("sglang-rksc: decode-side reuse on (replay and coalescing of deterministic duplicates)")
    return cache
