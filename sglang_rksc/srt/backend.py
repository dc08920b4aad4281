"""The `rksc` radix-cache backend factory: runs inside the scheduler process.

Builds `RkscRadixCache` from SGLang's `TreeCacheBuildContext` and the
`--rksc-*` settings (`SGLANG_RKSC_CONFIG`), with the features `features` lists.
With semantic sharing or span embeddings on it also creates the per-slot
hidden-state store (and, for semantic sharing, the input-embedding probe), and
points the capture hooks at it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.cache.radix_cache import RkscRadixCache
from sglang_rksc.config import RkscConfig
from sglang_rksc.srt import capture
from sglang_rksc.srt.features import ServedModel, feature_factories

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


def build_tree_cache(ctx: TreeCacheBuildContext) -> RkscRadixCache:
    """Factory for `register_radix_cache_backend(BACKEND_NAME, ...)`: the cache with the features the
    settings turn on (`features.FEATURES`)."""
    config = RkscConfig.from_env()
    capture.deactivate()
    model = ctx.tp_worker.model_runner.model
    rotary = model.model.layers[0].self_attn.rotary_emb if config.packets else None
    wants_states = config.semantic.on or config.span_embeddings
    if wants_states:
        why = _why_no_semantic(ctx)
        if why:
            logger.warning("sglang-rksc: semantic sharing and span embeddings are not supported with %s", why)
            off = dataclasses.replace(config.semantic, on=False)
            config = dataclasses.replace(config, semantic=off, span_embeddings=False)
            wants_states = False
    served = ServedModel(**(_with_states(ctx, config) if wants_states else {}), rotary=rotary)
    cache = RkscRadixCache(ctx.params, feature_factories(config, served))
    logger.info("sglang-rksc: rksc cache features: %s", ", ".join(cache.features.names()) or "none")
    if cache.features.get("packets") is not None:
        logger.info(
            "sglang-rksc: packets on (marked prompt spans reuse cached KV, keys turned by RoPE), adapter: %s",
            cache.features.get("packets").adapter_name,
        )
    return cache


def _with_states(ctx: TreeCacheBuildContext, config: RkscConfig) -> dict[str, Any]:
    """The per-slot hidden-state store (and, for semantic sharing, the input-embedding probe), with the
    capture hooks pointed at it: the `ServedModel` fields they fill."""
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
    return {"states": states, "probe": probe, "context_len": ctx.model_config.context_len}
