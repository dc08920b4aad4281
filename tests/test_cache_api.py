"""SGLang's cache API kept whole: our cache takes every argument its base takes and emits KV events as it does."""

from __future__ import annotations

import inspect

import pytest
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.events import AllBlocksCleared, BlockRemoved, BlockStored
from sglang.srt.mem_cache.radix_cache import RadixCache

from sglang_rksc.cache.radix_cache import RkscRadixCache
from tests.pool_harness import PoolHarness, asks_config

pytestmark = pytest.mark.usefixtures("sglang_context")

X = list(range(10, 22))  # a shared prompt
A = list(range(100, 121))  # a generated span
A2 = A[:7] + [300] + A[8:]  # a near-duplicate of it
B = list(range(400, 421))  # an unrelated span


@pytest.mark.parametrize("method", ["__init__", "create_simulated"])
def test_every_argument_of_the_base_is_accepted(method):
    """Compared against the pinned SGLang: same names, kinds, defaults and order for what the base takes."""
    base = list(inspect.signature(getattr(RadixCache, method)).parameters.values())
    ours = list(inspect.signature(getattr(RkscRadixCache, method)).parameters.values())
    assert [p.name for p in ours[: len(base)]] == [p.name for p in base]
    for theirs, mine in zip(base, ours, strict=False):
        assert (mine.kind, mine.default) == (theirs.kind, theirs.default), (method, mine, theirs)
    assert all(p.default is not inspect.Parameter.empty for p in ours[len(base) :]), "our extras must be optional"


def test_create_simulated_honours_the_event_arguments():
    ours = RkscRadixCache.create_simulated(page_size=1, enable_kv_cache_events=True, dynamo_kv_event_format=True)
    theirs = RadixCache.create_simulated(page_size=1, enable_kv_cache_events=True, dynamo_kv_event_format=True)
    assert type(ours) is RkscRadixCache
    assert ours.kv_events.enabled and ours.kv_events.dynamo_format
    assert (ours.kv_events.enabled, ours.kv_events.dynamo_format) == (
        theirs.kv_events.enabled,
        theirs.kv_events.dynamo_format,
    )
    assert not RkscRadixCache.create_simulated(enable_kv_cache_events=False).kv_events.enabled


def _drive(h: PoolHarness) -> list:
    """Inserts (one splitting a node), a flush of everything by eviction, a reset; the events, as data."""
    h.run(X, A)
    h.run(X, B)  # splits the X + A node at the end of X
    h.run(X + A[:5], B[:9])  # splits inside A
    events = h.cache.take_events()
    h.cache.evict(EvictParams(num_tokens=10_000))
    events += h.cache.take_events()
    h.cache.reset()
    events += h.cache.take_events()
    return [_as_data(e) for e in events]


def _as_data(event) -> tuple:
    if isinstance(event, BlockStored):
        return ("stored", tuple(event.block_hashes), event.parent_block_hash, tuple(event.token_ids))
    if isinstance(event, BlockRemoved):
        return ("removed", tuple(sorted(event.block_hashes)))
    return (type(event).__name__,)


def test_kv_events_are_those_of_stock_radix_cache():
    ours = _drive(PoolHarness(asks_config(on=False), kv_events=True))
    theirs = _drive(PoolHarness(kv_events=True, stock=True))
    assert ours == theirs
    kinds = [e[0] for e in ours]
    assert "stored" in kinds and "removed" in kinds and kinds[-1] == AllBlocksCleared.__name__


def _replay(events: list, live: set[int]) -> None:
    for event in events:
        if isinstance(event, BlockStored):
            assert not live & set(event.block_hashes), "a block stored twice"
            live |= set(event.block_hashes)
        elif isinstance(event, BlockRemoved):
            assert set(event.block_hashes) <= live, "a block removed that was not stored, or removed twice"
            live -= set(event.block_hashes)


def test_dedupe_reports_the_blocks_it_frees_and_nothing_twice():
    """Replaying the events keeps an exact picture of the tree (page size 1: a block per cached token):
    the blocks dedupe freed are reported removed, once, and after eviction nothing is left."""
    h = PoolHarness(asks_config(threshold=0.8, min_span=8, probe=False), kv_events=True)
    live: set[int] = set()
    h.run(X, A)
    h.run(X, A2)  # deduplicated into A: its span's slots freed, its nodes deleted
    assert h.asks.stats.dedupes == 1
    _replay(h.cache.take_events(), live)
    assert len(live) == h.cache.total_size() == len(X) + len(A) - 1
    h.run(X, B)
    _replay(h.cache.take_events(), live)
    assert len(live) == h.cache.total_size()
    h.cache.evict(EvictParams(num_tokens=10_000))
    _replay(h.cache.take_events(), live)
    assert not live and h.cache.total_size() == 0
