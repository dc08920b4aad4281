"""The features of the `rksc` cache, in the order the cache runs them: adding a feature is one entry here.

Each entry names the feature, says from the settings whether it is on, and builds it over the cache from
what the scheduler's model runner provides (`ServedModel`; unit tests give what they have). The order is
the order of the cache's calls at each point: at release, the span report reads the output's slots first,
the marks remember the path, the reuse record follows (so that a replay carries the span vector), and ASKS
dedupe comes last (it may free the span).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.cache.feature import CacheFeature
from sglang_rksc.cache.radix_cache import FeatureFactory
from sglang_rksc.config import RkscConfig


@dataclass(frozen=True)
class ServedModel:
    """What features take from the served model; None where it is not there (unit tests, or not needed)."""

    states: SlotStates | None = None  # pooled hidden states per KV slot (ASKS, span report)
    probe: TokenProbe | None = None  # the input-embedding probe (ASKS)
    context_len: int | None = None
    rotary: Any = None  # the layers' rotary embedding (packets turn cached keys with it)


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    wanted: Callable[[RkscConfig], bool]
    build: Callable[[Any, RkscConfig, ServedModel], CacheFeature | None]  # (cache, config, model)


def _span_report(cache: Any, config: RkscConfig, model: ServedModel) -> CacheFeature | None:
    from sglang_rksc.spans.report import SpanReport

    return None if model.states is None else SpanReport(cache, model.states)


def _marks(cache: Any, config: RkscConfig, model: ServedModel) -> CacheFeature:
    from sglang_rksc.rsbcm.marks import BranchMarks

    return BranchMarks(cache)


def _reuse(cache: Any, config: RkscConfig, model: ServedModel) -> CacheFeature:
    from sglang_rksc.reuse.store import ReuseStore

    return ReuseStore(cache.attached)


def _asks(cache: Any, config: RkscConfig, model: ServedModel) -> CacheFeature | None:
    from sglang_rksc.asks.sharing import SemanticSharing

    if model.states is None:
        return None
    return SemanticSharing(cache, config.semantic, model.states, model.probe, model.context_len)


def _heads(cache: Any, config: RkscConfig, model: ServedModel) -> CacheFeature | None:
    from sglang_rksc.rlkv.cache_windows import HeadWindows
    from sglang_rksc.rlkv.windows import pool_of

    pool = pool_of(cache.token_to_kv_pool_allocator)
    return None if pool is None else HeadWindows(cache, pool)


def _packets(cache: Any, config: RkscConfig, model: ServedModel) -> CacheFeature | None:
    from pathlib import Path

    from sglang_rksc.packets.adapter import PacketAdapter
    from sglang_rksc.packets.launch_checks import AUTO_ADAPTER, NO_ADAPTER
    from sglang_rksc.packets.reuse import PacketReuse
    from sglang_rksc.packets.rope_shift import RopeShift

    if model.rotary is None:
        return None
    choice = config.packet_adapter
    # The launcher resolved 'auto' to a file or 'none'; a stock launch that did not is plain reuse.
    adapter = None if choice in (NO_ADAPTER, AUTO_ADAPTER) else PacketAdapter.load(Path(choice))
    return PacketReuse(cache, RopeShift.of_module(model.rotary), adapter)


FEATURES: list[FeatureSpec] = [
    FeatureSpec("span_report", lambda c: c.span_embeddings, _span_report),
    FeatureSpec("marks", lambda c: True, _marks),
    FeatureSpec("reuse", lambda c: c.reuse, _reuse),
    FeatureSpec("asks", lambda c: c.semantic.on, _asks),
    FeatureSpec("heads", lambda c: c.heads.sparsity > 0, _heads),
    FeatureSpec("packets", lambda c: c.packets, _packets),
]


def feature_factories(config: RkscConfig, model: ServedModel = ServedModel()) -> list[FeatureFactory]:
    """One factory per feature the settings turn on, in the list's order, for `RkscRadixCache`."""
    return [_bound(spec, config, model) for spec in FEATURES if spec.wanted(config)]


def _bound(spec: FeatureSpec, config: RkscConfig, model: ServedModel) -> FeatureFactory:
    return lambda cache: spec.build(cache, config, model)
