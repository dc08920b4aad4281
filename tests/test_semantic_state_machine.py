"""A hypothesis state machine drives the semantic cache on real CPU pools in random orders.

Steps: admit (match, lock, allocate), decode, checkpoint (as after a prefill
chunk), finish (checkpoint, free, unlock, dedupe), evict, and holding/
dropping extra locks on random nodes. After every step: no slot is owned by
two nodes, none leaks or is freed twice, evictable + protected equals the
slots in the tree, and no locked node was evicted.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sglang.srt.mem_cache.base_prefix_cache import EvictParams

from sglang_rksc.cache import tree_paths
from tests.pool_harness import PoolHarness, asks_config

pytestmark = pytest.mark.usefixtures("sglang_context")

X1, X2 = list(range(10, 22)), list(range(10, 21)) + [23]
A = list(range(100, 121))
SPANS = [A, A[:7] + [300] + A[8:], A[:3] + [301, 302] + A[5:], list(range(400, 416))]
TAILS = [[], [50, 51, 52, 53, 54, 55]]
NAMESPACES = [None, "tenant-b"]
REACHED = {"dedupes": 0, "forks_alias": 0, "forks_probe": 0, "evicted": 0}  # over all examples


class SemanticCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = asks_config(threshold=0.8, probe=True, probe_threshold=0.8, min_span=8, length_ratio=1.5)
        self.h = PoolHarness(config, slots=320, rows=8)
        self.locks = []  # (lock, node) held by the test itself

    @rule(
        prompt=st.sampled_from([X1, X2]),
        span=st.sampled_from([[], *SPANS]),
        tail=st.sampled_from(TAILS),
        salt=st.sampled_from(NAMESPACES),
    )
    def admit(self, prompt, span, tail, salt):
        self._make_room()
        self.h.admit(prompt + span[:-1] + tail, cache_salt=salt)

    def _make_room(self):
        """At most 6 requests run at once: the oldest finishes first."""
        if len(self.h.running) >= 6:
            self.h.finish(self.h.running[0])

    @rule(prompt=st.sampled_from([X1, X2]), output=st.sampled_from(SPANS), salt=st.sampled_from(NAMESPACES))
    def whole_branch(self, prompt, output, salt):
        """A branch generates a whole span and finishes: where near-duplicates meet and get deduplicated."""
        self._make_room()
        req = self.h.admit(prompt, cache_salt=salt)
        if req is not None:
            self.h.generate(req, output)
            self.h.finish(req)

    @precondition(lambda self: len(self.h.asks.aliases))
    @rule(data=st.data(), tail=st.sampled_from(TAILS))
    def reach_an_alias(self, data, tail):
        """A request that continues through a deduplicated span: it should fork from the donor."""
        parent = data.draw(st.sampled_from(sorted(self.h.asks.aliases.by_parent, key=lambda n: n.id)))
        alias = data.draw(st.sampled_from(self.h.asks.aliases.under(parent)))
        path, node = [], parent
        while node is not self.h.cache.root_node:
            path[:0] = list(node.key.raw_token_ids())
            node = node.parent
        self._make_room()
        if self.h.cache.attached(parent):  # finishing a request may have evicted or deduplicated it
            self.h.admit(path + list(alias.tokens) + tail, extra_key=alias.namespace[0], cache_salt=alias.namespace[1])

    @rule(data=st.data())
    def reach_a_paraphrase(self, data):
        """A request that paraphrases a cached span (one token changed): the probe may fork it."""
        cache = self.h.cache
        parents, stack = [], [cache.root_node]
        while stack:
            node = stack.pop()
            if node.children:
                parents.append(node)
            stack.extend(node.children.values())
        parents.sort(key=lambda n: n.id)
        if not parents:
            return
        parent = data.draw(st.sampled_from(parents))
        child = data.draw(st.sampled_from(sorted(parent.children.values(), key=lambda n: n.id)))
        donor = list(tree_paths.tokens_of(tree_paths.chain_below(child)))
        if len(donor) < 12:
            return
        path, node = [], parent
        while node is not cache.root_node:
            path[:0] = list(node.key.raw_token_ids())
            node = node.parent
        paraphrase = donor[:1] + [499] + donor[2:]
        self._make_room()
        if not cache.attached(child):
            return
        self.h.admit(path + paraphrase, extra_key=child.key.extra_key, cache_salt=child.key.cache_salt)

    @precondition(lambda self: self.h.running)
    @rule(data=st.data(), output=st.sampled_from(SPANS))
    def decode(self, data, output):
        req = data.draw(st.sampled_from(self.h.running))
        self.h.generate(req, output[: data.draw(st.integers(1, len(output)))])

    @precondition(lambda self: self.h.running)
    @rule(data=st.data())
    def checkpoint(self, data):
        req = data.draw(st.sampled_from(self.h.running))
        req.refresh_fill_ids()
        self.h.cache.checkpoint(req, up_to=req.kv.kv_committed_len)

    @precondition(lambda self: self.h.running)
    @rule(data=st.data())
    def finish(self, data):
        self.h.finish(data.draw(st.sampled_from(self.h.running)))

    @rule(n=st.integers(1, 80))
    def evict(self, n):
        REACHED["evicted"] += self.h.cache.evict(EvictParams(num_tokens=n)).num_tokens_evicted

    @rule(data=st.data())
    def lock_a_node(self, data):
        nodes, stack = [], list(self.h.cache.root_node.children.values())
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node.children.values())
        if nodes and len(self.locks) < 3:
            node = data.draw(st.sampled_from(nodes))
            self.locks.append((self.h.cache.lock(node), node))

    @precondition(lambda self: self.locks)
    @rule(data=st.data())
    def unlock_a_node(self, data):
        lock, _ = self.locks.pop(data.draw(st.integers(0, len(self.locks) - 1)))
        self.h.cache.unlock(lock)

    @invariant()
    def slots_are_accounted_for(self):
        self.h.check()

    @invariant()
    def locked_nodes_stay_in_the_tree(self):
        for _, node in self.locks:
            assert self.h.cache.attached(node), "a locked node was evicted or deduplicated"
        for req in self.h.running:
            assert self.h.cache.attached(req.last_node), "a running request's prefix was evicted"

    def teardown(self):
        for key in ("dedupes", "forks_alias", "forks_probe"):
            REACHED[key] += getattr(self.h.asks.stats, key)


SemanticCacheMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,  # the same runs every time: the reached-mechanisms check below cannot flake
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSemanticCacheMachine = SemanticCacheMachine.TestCase


def test_the_machine_reached_every_mechanism():
    """Runs after the machine: its random runs did dedupe, fork both ways, and evict."""
    assert all(REACHED.values()), REACHED
