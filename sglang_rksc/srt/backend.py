"""The `rksc` radix-cache backend factory: runs inside the scheduler process.

Builds `SemanticRadixCache` from SGLang's `TreeCacheBuildContext` and the
`--rksc-*` settings (`SGLANG_RKSC_CONFIG`). With semantic sharing on it also
creates the per-slot hidden-state store, the input-embedding probe, and points
the capture hooks at them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.cache.semantic import SemanticRadixCache
from sglang_rksc.srt import capture
from sglang_rksc.srt.config import RkscConfig

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


def build_tree_cache(ctx: TreeCacheBuildContext) -> SemanticRadixCache:
    """Factory for `register_radix_cache_backend("rksc", ...)`."""
    config = RkscConfig.from_env()
    capture.deactivate()
    if config.semantic or config.span_embeddings:
        why = _why_no_semantic(ctx)
        if why:
            logger.warning("sglang-rksc: semantic sharing and span embeddings are not supported with %s", why)
            config = dataclasses.replace(config, semantic=False, span_embeddings=False)
    if not (config.semantic or config.span_embeddings):
        return _with_reuse(SemanticRadixCache(ctx.params, config), config)

    model = ctx.tp_worker.model_runner.model
    device = next(model.parameters()).device
    allocator = ctx.params.token_to_kv_pool_allocator
    layers = None
    if config.pooling == "layers":
        layers = capture.pooled_layer_indices(ctx.model_config.num_hidden_layers, config.pooling_layers)
    # Slot 0 is the allocator's padding slot: one row more than its size.
    states = SlotStates(
        allocator.size + 1, ctx.model_config.hidden_size, num_layers=len(layers) if layers else 1, device=device
    )
    probe = TokenProbe(model.get_input_embeddings().weight) if config.semantic and config.probe else None
    capture.activate(states, model, layers)
    logger.info(
        "sglang-rksc: hidden states captured (semantic sharing %s, threshold %.3f, probe %s at %.3f, span "
        "embeddings %s, pooling %s%s, %.1f MiB of states)",
        "on" if config.semantic else "off",
        config.threshold,
        "on" if probe else "off",
        config.probe_threshold,
        "on" if config.span_embeddings else "off",
        config.pooling,
        f" {layers}" if layers else "",
        states.states.numel() * states.states.element_size() / 2**20,
    )
    cache = SemanticRadixCache(ctx.params, config, states=states, probe=probe, context_len=ctx.model_config.context_len)
    return _with_reuse(cache, config)


def _with_reuse(cache: SemanticRadixCache, config: RkscConfig) -> SemanticRadixCache:
    if config.reuse and not cache.disable:
        cache.enable_reuse()
        logger.info("sglang-rksc: decode-side reuse on (replay and coalescing of deterministic duplicates)")
    return cache
