"""RSBCM: the eviction priority, branch marks, and eviction on real CPU pools (no server)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from sglang.srt.mem_cache.base_prefix_cache import EvictParams

from sglang_rksc.rsbcm.eviction import POLICY_NAME, RsbcmStrategy, check_policy_flags, reasoning_depth
from sglang_rksc.rsbcm.marks import FINISHED, OPEN, REJECTED, node_mark, set_mark
from sglang_rksc.srt import seams
from sglang_rksc.wire import mark_request_args, parse_mark_request
from tests.pool_harness import PoolHarness, asks_config

pytestmark = pytest.mark.usefixtures("sglang_context")

PROMPT = list(range(10, 30))


def _node(parent=None, *, hits=1, age=0.0, children=0):
    node = SimpleNamespace(parent=parent, children={}, hit_count=hits, last_access_time=time.monotonic() - age)
    for i in range(children):
        node.children[i] = SimpleNamespace()
    return node


# ---------------------------------------------------------------- the priority


def test_depth_counts_branch_points_above_the_node():
    root = _node()
    trunk = _node(root, children=2)  # a branch point
    single = _node(trunk, children=1)
    leaf = _node(single)
    root.children = {0: trunk, 1: _node(root)}  # the root's own branching does not count
    assert reasoning_depth(trunk) == 0
    assert reasoning_depth(single) == 1
    assert reasoning_depth(leaf) == 1


def test_priority_orders_by_mark_then_value():
    strategy = RsbcmStrategy()
    root = _node()
    fork = _node(root, children=2)
    shallow, deep_parent = _node(root), _node(fork, children=2)
    deep = _node(deep_parent)
    # Deeper goes first, all else equal.
    assert strategy.get_priority(deep) < strategy.get_priority(shallow)
    # Reuse protects: a node later requests went through three times outranks a fresher one.
    reused = _node(root, hits=4, age=5.0)
    assert strategy.get_priority(shallow) < strategy.get_priority(reused)
    # Older goes first: one half-life halves the value.
    old = _node(root, age=strategy.half_life)
    assert strategy.value(old, time.monotonic()) == pytest.approx(0.5 * strategy.value(shallow, time.monotonic()), 0.01)
    # Marks come before everything else: a rejected, reused, shallow node goes before any open one.
    now = time.monotonic() + 1.0
    set_mark(reused, REJECTED, now)
    set_mark(shallow, FINISHED, now)
    assert strategy.get_priority(reused) < strategy.get_priority(shallow) < strategy.get_priority(deep)


def test_a_mark_lapses_when_a_request_reads_the_node_again():
    node = _node(_node())
    set_mark(node, REJECTED, time.monotonic())
    assert node_mark(node) == REJECTED
    assert not set_mark(node, FINISHED, time.monotonic())  # a weaker mark does not replace it
    node.last_access_time = time.monotonic() + 1.0  # what SGLang's match does
    assert node_mark(node) == OPEN


def test_settings_are_validated():
    assert RsbcmStrategy(half_life=5, reuse_weight=0).half_life == 5.0
    for bad in ({"half_life": 0}, {"reuse_weight": -1}, {"depth_weight": "x"}, {"depth_weight": True}):
        with pytest.raises(ValueError, match="must be a number"):
            RsbcmStrategy(**bad)
    with pytest.raises(ValueError, match="no setting halflife"):
        RsbcmStrategy(halflife=3)


def test_launcher_checks_of_the_policy_flags():
    check_policy_flags("lru", "{not json", "default")  # not ours: untouched
    check_policy_flags(POLICY_NAME, '{"half_life": 10}', "rksc")
    with pytest.raises(ValueError, match="needs --radix-cache-backend rksc"):
        check_policy_flags(POLICY_NAME, None, None)
    with pytest.raises(ValueError, match="not JSON"):
        check_policy_flags(POLICY_NAME, "{half_life: 1}", "rksc")
    with pytest.raises(ValueError, match="no setting"):
        check_policy_flags(POLICY_NAME, '{"alpha": 1}', "rksc")


def test_the_policy_is_a_choice_and_a_strategy_of_sglang():
    from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES
    from sglang.srt.mem_cache.utils import get_eviction_strategy

    seams.install_registrations()
    assert POLICY_NAME in RADIX_EVICTION_POLICY_CHOICES
    assert isinstance(get_eviction_strategy(POLICY_NAME, {"half_life": 2.0}), RsbcmStrategy)


def test_mark_payload_round_trip_and_errors():
    args = mark_request_args(["a1", "b2"], "rejected")
    assert parse_mark_request(args) == (["a1", "b2"], "rejected")
    with pytest.raises(ValueError, match="mark must be one of"):
        mark_request_args(["a"], "dead")
    with pytest.raises(ValueError, match="request ids"):
        mark_request_args([], "finished")
    with pytest.raises(ValueError, match="one mark per call"):
        parse_mark_request({**args, "rksc_mark/finished/c": 1})
    with pytest.raises(ValueError, match="bad key"):
        parse_mark_request({"rksc_mark/finished": 1})


# ---------------------------------------------------------------- on real pools


def _harness(slots=256, **kwargs):
    return PoolHarness(asks_config(on=False), slots=slots, rows=8, eviction_policy=POLICY_NAME, **kwargs)


def _freed_by_evict(h, n):
    """Evict n tokens; return (reported, slots the allocator got back)."""
    before = h.allocator.available_size()
    reported = h.cache.evict(EvictParams(num_tokens=n)).num_tokens_evicted
    return reported, h.allocator.available_size() - before


def test_eviction_frees_exactly_what_it_reports_and_never_a_locked_node():
    h = _harness()
    kept = h.run(PROMPT, list(range(100, 130)))
    other = h.run(PROMPT, list(range(200, 230)))
    lock = h.cache.lock(kept.last_node)
    reported, freed = _freed_by_evict(h, 10_000)
    assert reported == freed > 0
    assert h.cache.attached(kept.last_node), "a locked node was evicted"
    assert not h.cache.attached(other.last_node)
    h.check()
    assert _freed_by_evict(h, 10_000) == (0, 0)  # nothing is freed twice
    h.cache.unlock(lock)
    reported, freed = _freed_by_evict(h, 10_000)
    assert reported == freed == len(PROMPT) + 29  # the prompt and the kept branch (its last token has no KV)
    h.check()


def test_rejected_branches_go_first_then_finished_then_open():
    h = _harness()
    branches = [h.run(PROMPT, list(range(base, base + 20))) for base in (100, 200, 300)]
    open_, finished, rejected = branches
    # The open branch is the least recently used and the shallowest: LRU would take it first.
    h.cache.mark([finished.rid], "finished")
    h.cache.mark([rejected.rid], "rejected")
    reported, _ = _freed_by_evict(h, 19)
    assert reported == 19
    assert not h.cache.attached(rejected.last_node)
    assert h.cache.attached(finished.last_node) and h.cache.attached(open_.last_node)
    _freed_by_evict(h, 19)
    assert not h.cache.attached(finished.last_node) and h.cache.attached(open_.last_node)
    stats = h.cache.eviction_stats
    assert (stats.evicted_rejected, stats.evicted_finished, stats.evicted_open) == (19, 19, 0)
    h.check()


def test_a_mark_covers_the_branch_below_its_branch_point_and_not_the_shared_trunk():
    h = _harness()
    thought = h.run(PROMPT, list(range(100, 120)))
    # The branch's verification continues the thought (prompt = trunk + thought + question).
    question = list(range(120, 125))
    check = h.run(PROMPT + list(range(100, 119)) + [119] + question, [7])
    sibling = h.run(PROMPT, list(range(200, 220)))
    marked = h.cache.mark([thought.rid, check.rid], "rejected")
    assert marked == 20 + len(question)  # thought (19 with KV + its last token in the check) + question
    trunk = sibling.last_node.parent
    assert node_mark(trunk) == OPEN and node_mark(sibling.last_node) == OPEN
    assert node_mark(check.last_node) == REJECTED
    reported, freed = _freed_by_evict(h, marked)
    assert reported == freed == marked
    assert h.cache.attached(sibling.last_node)
    h.check()


def test_a_request_can_mark_its_own_branch_and_unknown_or_evicted_rids_are_counted():
    h = _harness()
    h.run(PROMPT, list(range(200, 220)))  # a sibling: the prompt is shared
    done = h.run(PROMPT, list(range(100, 120)), custom_params={"rksc": {"mark": "finished"}})
    assert node_mark(done.last_node) == FINISHED
    assert node_mark(done.last_node.parent) == OPEN
    assert h.cache.mark(["never-seen"], "rejected") == 0
    _freed_by_evict(h, 10_000)
    assert h.cache.mark([done.rid], "rejected") == 0
    stats = h.marks.stats
    assert (stats.requests_unknown, stats.requests_gone) == (1, 1)


def test_a_mark_stops_at_a_locked_node():
    h = _harness()
    trunk_req = h.run(PROMPT, list(range(100, 111)))
    branch = h.run(PROMPT + list(range(100, 110)) + [110], list(range(300, 306)))
    trunk = trunk_req.last_node  # the only child of PROMPT: without the lock the mark would reach it
    lock = h.cache.lock(trunk)
    h.cache.mark([branch.rid], "rejected")
    assert node_mark(branch.last_node) == REJECTED and node_mark(trunk) == OPEN
    h.cache.unlock(lock)
    h.check()


def test_aliases_go_with_their_donor():
    """Semantic sharing on: when eviction takes a donor span, the alias that pointed at it goes too."""
    h = PoolHarness(asks_config(threshold=0.8, min_span=8), slots=256, rows=8, eviction_policy=POLICY_NAME)
    span = list(range(100, 121))
    h.run(PROMPT, span)
    h.run(PROMPT, span[:7] + [300] + span[8:])  # a near-duplicate: deduplicated into the first
    assert h.asks.stats.dedupes == 1 and len(h.asks.aliases)
    _freed_by_evict(h, 10_000)
    assert not len(h.asks.aliases)
    h.check()
