"""ASKS in the tree: dedupe at release, fork at admission, isolation, locks; on real CPU pools."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.radix_cache import RadixCache

from sglang_rksc.cache.radix_cache import RkscRadixCache
from sglang_rksc.config import RkscConfig, SemanticSettings
from sglang_rksc.srt.features import feature_factories
from sglang_rksc.wire import Meta
from tests.pool_harness import PoolHarness, asks_config
from tests.test_tree_cache import _exercise

X = list(range(10, 22))  # the shared prompt
A = list(range(100, 121))  # a generated span (21 tokens: 20 get KV)
A2 = A[:7] + [300] + A[8:]  # a near-duplicate: one token differs
B = list(range(400, 421))  # an unrelated span
R = [50, 51, 52, 53, 54, 55]  # what the program sends after a span


pytestmark = pytest.mark.usefixtures("sglang_context")


META_KEY = Meta.SEMANTIC


def settings(**overrides) -> SemanticSettings:
    values = dict(on=True, threshold=0.8, probe=True, probe_threshold=0.8, min_span=8, length_ratio=1.5)
    return SemanticSettings(**{**values, **overrides})


def config(**overrides) -> RkscConfig:
    return RkscConfig(semantic=settings(**overrides))


def test_semantic_off_is_exactly_radix_cache():
    ours = RkscRadixCache.create_simulated(features=feature_factories(asks_config(on=False)))
    assert _exercise(ours) == _exercise(RadixCache.create_simulated())


def test_semantic_off_keeps_requests_untouched():
    h = PoolHarness(asks_config(on=False))
    h.run(X, A)
    h.run(X, A2)
    req = h.admit(X + A2 + R)
    assert list(req.origin_input_ids) == X + A2 + R and req.customized_info is None
    assert h.asks is None  # no semantic component at all
    h.finish(req)
    h.check()


def test_near_duplicate_output_is_freed_into_an_alias():
    h = PoolHarness(config(probe=False))
    h.run(X, A)
    free_before = h.allocator.available_size()
    h.run(X, A2)
    # A2 shares A's first 7 tokens: its own span, from the branch point on, went back to the
    # allocator; the alias remembers where it went.
    assert h.asks.stats.dedupes == 1 and h.asks.stats.slots_freed == len(A2) - 1 - 7
    assert h.allocator.available_size() == free_before
    (alias,) = [a for aliases in h.asks.aliases.by_parent.values() for a in aliases]
    assert alias.tokens == tuple(A2[7:-1]) and alias.donor == tuple(A[7:-1]) and alias.similarity >= 0.8
    h.check()


def test_a_branch_reaching_an_alias_forks_from_its_donor():
    h = PoolHarness(config(probe=False))
    h.run(X, A)
    h.run(X, A2)
    req = h.admit(X + A2[:-1] + R)
    # The prompt now continues from A's KV: positions and keys are A's.
    assert list(req.origin_input_ids) == X + A[:-1] + R
    assert req.prefix_len == len(X) + len(A) - 1
    (info,) = req.customized_info[META_KEY]
    assert info["fork"] and info["source"] == "alias" and info["replaced_tokens"] == len(A) - 1 - 7
    assert info["reused_tokens"] == len(A) - 1 - 7 and info["fork_at"] == len(X) + 7
    assert h.asks.stats.forks_alias == 1
    h.finish(req)
    h.check()


def test_unseen_paraphrase_forks_by_the_probe_where_it_rejoins_the_donor_path():
    h = PoolHarness(config(dedupe=False))
    h.run(X, A)
    h.run(X + A[:-1] + R, [60, 61])  # the donor's branch went on with R
    req = h.admit(X + A2[:-1] + R)
    assert list(req.origin_input_ids) == X + A[:-1] + R
    (info,) = req.customized_info[META_KEY]
    assert info["fork"] and info["source"] == "probe" and info["similarity"] >= 0.8
    # A and the start of R come from the cache: everything but the last token.
    assert req.prefix_len == len(X) + len(A) - 1 + len(R) - 1
    h.finish(req)
    h.check()


def test_unrelated_spans_neither_fork_nor_dedupe():
    h = PoolHarness(config())
    h.run(X, A)
    h.run(X, B)
    assert h.asks.stats.dedupes == 0
    req = h.admit(X + B[:-1] + R)
    assert list(req.origin_input_ids) == X + B[:-1] + R  # its own span, exactly cached
    assert req.customized_info[META_KEY] == [{"fork": False}]
    h.finish(req)
    h.check()


@pytest.mark.parametrize("field", ["extra_key", "cache_salt"])
def test_nothing_crosses_a_namespace(field):
    h = PoolHarness(config())
    h.run(X, A)
    h.run(X, A2)  # deduplicated in the default namespace
    h.run(X + A[:-1] + R, [60, 61])
    # Each prompt in a namespace of its own: neither the alias nor the probe may reach across.
    for i, prompt in enumerate((X + A2[:-1] + R, X + A[:-1] + R)):
        req = h.admit(prompt, **{field: f"tenant-{i}"})
        assert list(req.origin_input_ids) == prompt and req.prefix_len == 0
        assert req.customized_info[META_KEY] == [{"fork": False}]
        h.finish(req)
    # A near-duplicate in another namespace is not deduplicated into the default one's spans.
    dedupes = h.asks.stats.dedupes
    h.run(X, A2, **{field: "tenant-2"})
    assert h.asks.stats.dedupes == dedupes
    h.check()


def test_within_one_namespace_the_probe_forks_onto_that_namespace_own_span():
    h = PoolHarness(config(dedupe=False))
    h.run(X + A2[:-1] + R, [60, 61], cache_salt="tenant")
    req = h.admit(X + A[:-1] + R, cache_salt="tenant")
    assert list(req.origin_input_ids) == X + A2[:-1] + R
    assert req.customized_info[META_KEY][0]["source"] == "probe"
    h.finish(req)
    h.check()


def test_per_request_opt_out_and_logprob_requests_keep_their_tokens():
    h = PoolHarness(config())
    h.run(X, A)
    h.run(X, A2)
    req = h.admit(X + A2[:-1] + R, custom_params={"rksc": {"semantic": False}})
    assert list(req.origin_input_ids) == X + A2[:-1] + R
    assert req.customized_info[META_KEY] == [{"fork": False, "skipped": "opted out"}]
    h.finish(req)
    h.check()


def test_a_locked_node_is_never_deduplicated():
    h = PoolHarness(config())
    h.run(X, A)
    h.run(X, B)
    holder = h.admit(X + B[:-1] + R)  # locks the B node while it runs
    node = holder.last_node
    assert list(node.key.raw_token_ids()) == B[:-1] and node.lock_ref > 0
    h.asks.settings = settings(threshold=-1.0)  # anything would be similar enough
    assert h.asks.dedupe(node) is None
    h.finish(holder)
    h.check()


def test_eviction_frees_each_slot_once_and_drops_dead_aliases():
    h = PoolHarness(config(probe=False))
    h.run(X, A)
    h.run(X, A2)
    assert len(h.asks.aliases)
    evicted = h.cache.evict(EvictParams(num_tokens=10_000)).num_tokens_evicted
    assert evicted == len(X) + len(A) - 1 and h.cache.total_size() == 0
    assert not len(h.asks.aliases)  # the parent they hung on is gone
    h.check()
    # With the donor gone, the alias cannot serve: the request computes its own span.
    req = h.admit(X + A2[:-1] + R)
    assert list(req.origin_input_ids) == X + A2[:-1] + R
    h.finish(req)
    h.check()


def test_flush_resets_aliases_and_counts():
    h = PoolHarness(config())
    h.run(X, A)
    h.run(X, A2)
    h.cache.evict(EvictParams(num_tokens=10_000))
    h.cache.reset()
    assert len(h.asks.aliases) == 0 and h.cache.total_size() == 0


def test_probe_embedding_of_a_paraphrase_is_closer_than_an_unrelated_span():
    h = PoolHarness(config())
    probe = h.asks.probe
    a, a2, b = probe.embed(A), probe.embed(A2), probe.embed(B)
    assert float(a @ a2) > 0.9 > float(a @ b)
    assert torch.allclose(a.norm(), torch.tensor(1.0))


def test_a_forked_branch_later_requests_are_rewritten_the_same_way():
    """After a probe fork, the branch's next request (its own span, its output, more) hits the donor's
    path through the fork's record: a follow-up, not a new fork, and nothing of the span recomputed."""
    h = PoolHarness(config(dedupe=False))
    h.run(X + A2[:-1] + R, [60, 61])  # the donor branch
    branch = h.run(X + A[:-1] + R, [70, 71])  # forks: A's span rewritten into A2's
    (forked,) = branch.customized_info[META_KEY]
    assert forked["fork"] and forked["source"] == "probe"
    probes = h.asks.stats.forks_probe
    follow = h.admit(X + A[:-1] + R + [70, 71, 80, 81])
    (info,) = follow.customized_info[META_KEY]
    assert info == {**info, "fork": False, "source": "followup"}
    assert list(follow.origin_input_ids) == X + A2[:-1] + R + [70, 71, 80, 81]
    # Cached: the prompt, the rewritten span, the branch's output but its last token (never forwarded).
    assert follow.prefix_len == len(X + A2[:-1] + R) + 1
    stats = h.asks.stats
    assert (stats.followups_hit, stats.followups_missed, stats.forks_probe) == (1, 0, probes)
    h.finish(follow)
    h.check()


def test_a_follow_up_asking_for_logprobs_after_the_span_is_rewritten_and_its_logprobs_move_with_it():
    """A `select` on a forked branch asks for the logprobs of its choice tokens only: rewritten like any
    follow-up, its logprob start shifted by the rewrite; logprobs reaching into the span keep the tokens."""
    h = PoolHarness(config(dedupe=False))
    h.run(X + A2[:-1] + R, [60, 61])
    h.run(X + A[:-1] + R, [70, 71])  # forked: A's span rewritten into A2's
    sent = X + A[:-1] + R + [70, 71, 80, 81]
    choice = h.admit(sent, logprob_start_len=len(sent) - 2)
    (info,) = choice.customized_info[META_KEY]
    assert info["source"] == "followup"
    rewritten = X + A2[:-1] + R + [70, 71, 80, 81]
    assert list(choice.origin_input_ids) == rewritten and choice.logprob_start_len == len(rewritten) - 2
    assert choice.prefix_len == len(X + A2[:-1] + R) + 1  # the span and the branch's output were cached
    h.finish(choice)
    whole = h.admit(sent, logprob_start_len=len(X) + 2)
    assert list(whole.origin_input_ids) == sent and whole.logprob_start_len == len(X) + 2
    assert whole.customized_info[META_KEY] == [{"fork": False, "skipped": "input logprobs requested"}]
    h.finish(whole)
    h.check()


def test_a_follow_up_whose_donor_was_evicted_is_computed_in_full():
    h = PoolHarness(config(dedupe=False))
    h.run(X + A2[:-1] + R, [60, 61])
    h.run(X + A[:-1] + R, [70, 71])
    h.cache.evict(EvictParams(num_tokens=10_000))
    follow = h.admit(X + A[:-1] + R + [70, 71, 80])
    assert list(follow.origin_input_ids) == X + A[:-1] + R + [70, 71, 80] and follow.prefix_len == 0
    assert h.asks.stats.followups_missed == 0  # the alias went with its donor: nothing to miss
    h.finish(follow)
    h.check()
