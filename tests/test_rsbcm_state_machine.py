"""The semantic cache's state machine under RSBCM eviction, with branch marks.

Everything the semantic machine checks still holds (no slot owned twice,
leaked or freed twice; locked nodes and running requests' prefixes stay),
plus: the cache runs `--radix-eviction-policy rsbcm`, released requests'
branches get marked rejected or finished at random, and every eviction takes
the evictable leaves in the documented priority order and frees exactly the
slots it reports.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule
from sglang.srt.mem_cache.base_prefix_cache import EvictParams

from sglang_rksc.rsbcm.eviction import POLICY_NAME
from sglang_rksc.rsbcm.marks import MARKS, node_mark
from tests.pool_harness import PoolHarness, asks_config
from tests.test_semantic_state_machine import SemanticCacheMachine

pytestmark = pytest.mark.usefixtures("sglang_context")

REACHED = {"marked": 0, "evicted_marked": 0, "evicted_open": 0}
HALF_LIFE = 30.0  # the documented default


def documented_priority(node, now):
    """The README's formula, written out independently of the strategy: (rank, value)."""
    depth, parent = 0, node.parent
    while parent.parent is not None:
        depth += len(parent.children) > 1
        parent = parent.parent
    value = (1 + max(node.hit_count - 1, 0)) / (1 + depth) * 0.5 ** ((now - node.last_access_time) / HALF_LIFE)
    return node_mark(node), value


class RsbcmCacheMachine(SemanticCacheMachine):
    def __init__(self) -> None:
        super().__init__()
        config = asks_config(threshold=0.8, probe=True, probe_threshold=0.8, min_span=8, length_ratio=1.5)
        self.h = PoolHarness(config, slots=320, rows=8, eviction_policy=POLICY_NAME)

    @precondition(lambda self: self.h.released)
    @rule(data=st.data(), mark=st.sampled_from(list(MARKS)))
    def mark_released_branches(self, data, mark):
        rids = data.draw(st.lists(st.sampled_from(self.h.released), min_size=1, max_size=3, unique=True))
        REACHED["marked"] += self.h.cache.mark(rids, mark)

    @rule(n=st.integers(1, 80))
    def evict(self, n):
        cache = self.h.cache
        leaves = list(cache.evictable_leaves)
        now = time.monotonic()
        priority = {leaf: documented_priority(leaf, now) for leaf in leaves}
        free_before = self.h.allocator.available_size()
        stats = cache.eviction_stats
        marked_before = stats.evicted_rejected + stats.evicted_finished
        result = cache.evict(EvictParams(num_tokens=n))
        assert self.h.allocator.available_size() - free_before == result.num_tokens_evicted
        gone = [leaf for leaf in leaves if not cache.attached(leaf)]
        kept = [leaf for leaf in leaves if cache.attached(leaf)]
        if gone and kept:
            # Leaves present before the call went in priority order (rank, then value: the value
            # ratios do not depend on the time they were read at).
            last = max(priority[leaf][:2] for leaf in gone)
            first_kept = min(priority[leaf][:2] for leaf in kept)
            in_order = last[0] < first_kept[0] or (last[0] == first_kept[0] and last[1] <= first_kept[1] * (1 + 1e-6))
            assert in_order, (last, first_kept)
        REACHED["evicted_marked"] += stats.evicted_rejected + stats.evicted_finished - marked_before
        REACHED["evicted_open"] += stats.evicted_open


RsbcmCacheMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRsbcmCacheMachine = RsbcmCacheMachine.TestCase


def test_the_machine_marked_and_evicted_marked_and_open_branches():
    assert all(REACHED.values()), REACHED
