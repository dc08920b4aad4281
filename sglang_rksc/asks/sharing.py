"""ASKS as a component of the `rksc` cache: fork at admission, dedupe at release.

Dedupe at release. When a request is released and its last node N (for a
generation, its output span) is a free leaf whose pooled hidden states are
within `threshold` of a sibling C under the same parent P, N's KV slots are
freed at once and an alias (P, N's tokens) -> C's tokens is recorded.

Fork at admission. When a request's tokens leave the tree at node P, its next
span S may fork from a child C of P (`planning`): its prompt is rewritten to
P + C + the rest (`request_edit`), so the scheduler sees an ordinary exact hit
on C's KV.

Invariants kept: every KV slot belongs to one node (a fork reuses C's slots
through an ordinary match; a dedupe frees N's slots and deletes N), a slot is
freed once (through the allocator, for unlocked leaves only), locked nodes
are never touched, and nothing crosses a namespace (`extra_key`,
`cache_salt`): only children in the request's own namespace are compared.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams, MatchResult
from sglang.srt.mem_cache.radix_cache import RadixKey

from sglang_rksc.asks import planning, request_edit
from sglang_rksc.asks.aliases import AliasBook
from sglang_rksc.asks.planning import Alias, ForkPlan, SpanRules
from sglang_rksc.cache import tree_paths
from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.cache.feature import CacheFeature
from sglang_rksc.config import SemanticSettings
from sglang_rksc.wire import Meta, Section, SemanticEntry, SemanticStats, put_meta


class SemanticSharing(CacheFeature):
    """ASKS over one `RkscRadixCache` (`cache`), whose tree, allocator and node deletion it uses."""

    name = "asks"

    def __init__(
        self,
        cache: Any,
        settings: SemanticSettings,
        states: SlotStates,
        probe: TokenProbe | None = None,
        context_len: int | None = None,
    ) -> None:
        if cache.page_size != 1:
            raise ValueError("semantic sharing (--rksc-semantic on) needs --page-size 1")
        self.cache = cache
        self.settings = settings
        self.rules = SpanRules(settings.min_span, settings.length_ratio)
        self.states = states
        self.probe = probe if settings.probe else None
        self.context_len = context_len
        self.aliases = AliasBook()
        self.stats = SemanticStats()

    def reset(self) -> None:
        self.aliases.reset()

    def describe(self) -> dict[str, Any]:
        return {
            "semantic": True,
            "config": asdict(self.settings),
            "aliases": len(self.aliases),
            Section.SEMANTIC: self.stats.as_dict(),
        }

    # ------------------------------------------------------------------ admission

    def admit(self, params: MatchPrefixParams, exact_match: Callable[[MatchPrefixParams], MatchResult]):
        """The cache's `match_prefix` for a request being admitted for the first time."""
        req = params.req
        exact = exact_match(MatchPrefixParams(key=params.key, cow_mamba=params.cow_mamba, req=req))
        self.stats.admissions += 1
        self.stats.exact_hit_tokens += exact.device_prefix_len
        skipped = request_edit.why_not_forked(req)
        plan = None if skipped else self._plan(req, exact)
        logprobs_from = request_edit.input_logprobs_start(req)
        if plan is not None and logprobs_from is not None and logprobs_from < plan.prefix_len + plan.span_len:
            plan, skipped = None, "input logprobs requested"  # they would describe donor tokens
        if plan is not None and not self._donor_reachable(plan, params, exact_match):
            plan, skipped = None, "donor not reusable"
            self.stats.forks_unreachable += 1
        if plan is None:
            entry: SemanticEntry = {"fork": False}
            if skipped:
                entry["skipped"] = skipped
            put_meta(req, Meta.SEMANTIC, entry)
            return exact
        span = tuple(req.origin_input_ids[plan.prefix_len : plan.prefix_len + plan.span_len])
        request_edit.rewrite_prompt(req, plan.new_ids)
        key = RadixKey(
            req.full_untruncated_fill_ids,
            req.extra_key,
            is_bigram=params.key.is_bigram,
            limit=None if params.key.limit is None else req._compute_max_prefix_len(len(req.full_untruncated_fill_ids)),
            cache_salt=req.cache_salt,
        )
        result = exact_match(MatchPrefixParams(key=key, cow_mamba=params.cow_mamba, req=req))
        reused = max(0, result.device_prefix_len - exact.device_prefix_len)
        if plan.source == "followup":
            self.stats.followups_hit += 1
        elif plan.source == "alias":
            self.stats.forks_alias += 1
        else:
            self.stats.forks_probe += 1
            # The branch's later requests carry its own span again: they are rewritten the same way.
            space = (req.extra_key, req.cache_salt)
            self.aliases.add(exact.last_device_node, Alias(span, plan.donor, plan.similarity, space, origin="fork"))
        self.stats.tokens_reused += reused
        self.stats.tokens_replaced += plan.span_len
        fork: SemanticEntry = {
            "fork": plan.source != "followup",
            "source": plan.source,
            "similarity": round(plan.similarity, 4),
            "fork_at": plan.prefix_len,
            "replaced_tokens": plan.span_len,
            "donor_tokens": len(plan.donor),
            "reused_tokens": reused,
            "prompt_tokens_served": len(req.origin_input_ids),
        }
        put_meta(req, Meta.SEMANTIC, fork)
        return result

    def _donor_reachable(
        self, plan: ForkPlan, params: MatchPrefixParams, exact_match: Callable[[MatchPrefixParams], MatchResult]
    ) -> bool:
        """Whether the request could continue from the end of the donor: a dry match (no request, so nothing
        is recorded) of P + donor, under the cache's limits (head compression cuts a match back to the last
        complete window, which a donor's end may have given back). A fork that would recompute its donor
        would change the prompt and save nothing."""
        reach = plan.prefix_len + len(plan.donor)
        ids = params.key.token_ids
        donor_path = plan.new_ids[:reach]
        key = RadixKey(
            array(ids.typecode, donor_path) if isinstance(ids, array) else donor_path,
            params.key.extra_key,
            cache_salt=params.key.cache_salt,
        )
        return exact_match(MatchPrefixParams(key=key)).device_prefix_len >= reach

    def _plan(self, req: Any, exact: MatchResult) -> ForkPlan | None:
        parent, prefix_len = exact.last_device_node, exact.device_prefix_len
        prompt = list(req.origin_input_ids)
        if len(prompt) - prefix_len < self.rules.min_span or (not parent.children and parent not in self.aliases):
            return None
        space = (req.extra_key, req.cache_salt)
        usable = [a for a in self.aliases.under(parent) if self.settings.dedupe or a.origin == "fork"]
        plan = planning.plan_from_aliases(
            prompt,
            prefix_len,
            usable,
            space,
            lambda alias: tree_paths.has_path(self.cache, parent, alias.donor, alias.namespace),
        )
        if plan is None and any(a.origin == "fork" for a in planning.aliases_naming(prompt, prefix_len, usable, space)):
            self.stats.followups_missed += 1  # the branch's donor path is gone: computed in full
        if plan is None and self.probe is not None:
            plan = self._plan_from_probe(parent, prompt, prefix_len, space)
        if plan is None or not planning.fits_context(plan, req.sampling_params.max_new_tokens, self.context_len):
            return None
        return plan

    def _plan_from_probe(self, parent: Any, prompt: list[int], prefix_len: int, space: Any) -> ForkPlan | None:
        rest = prompt[prefix_len:]
        candidates = []
        for child in parent.children.values():
            if tree_paths.namespace(child.key) != space:
                continue
            path = tree_paths.tokens_of(tree_paths.chain_below(child))
            found = planning.probe_counterparts(rest, path, not child.children, self.rules)
            if found is not None:
                candidates.append(found)

        def score(span: Sequence[int], donor: Sequence[int]) -> float:
            return self.probe.best(self.probe.embed(span), [self.probe.embed(donor)])[1]

        return planning.best_probe_plan(prompt, prefix_len, candidates, score, self.settings.probe_threshold)

    # ------------------------------------------------------------------ release

    def on_release(self, req: Any, checkpointed: bool) -> None:
        """Release observer (the last one: it may free the request's span)."""
        if getattr(req, "skip_radix_cache_insert", False):
            return  # nothing of it entered the tree (packets): its last node is a prefix others left
        if checkpointed and self.settings.dedupe and req.last_node is not None and not request_edit.opted_out(req):
            self.dedupe(req.last_node)

    def _embedding(self, chain: Sequence[Any]) -> Any:
        return self.states.span_embedding(torch.cat([node.value for node in chain]))

    def dedupe(self, leaf: Any) -> Alias | None:
        """Free the span that ends in `leaf` into an alias of its nearest sibling span, if one is
        within the threshold. The span runs up from `leaf` to its branch point P; it must be
        unlocked and end in a leaf, so no request holds any of its slots."""
        cache = self.cache
        if leaf is cache.root_node or leaf.lock_ref > 0 or leaf.children or not tree_paths.attached(cache, leaf):
            return None
        chain = tree_paths.span_above(cache, leaf)
        tokens = tree_paths.tokens_of(chain)
        if len(tokens) < self.rules.min_span:
            return None
        embedding = self._embedding(chain)
        if embedding is None:
            return None
        parent, space = chain[0].parent, tree_paths.namespace(leaf.key)
        donors, embeddings = [], []
        for sibling in parent.children.values():
            if sibling is chain[0] or tree_paths.namespace(sibling.key) != space:
                continue
            below = tree_paths.chain_below(sibling)
            for end in range(1, len(below) + 1):  # a donor span ends where its path ends or continues
                span = below[:end]
                if not self.rules.comparable(len(tokens), sum(len(node.key) for node in span)):
                    continue
                donor_embedding = self._embedding(span)
                if donor_embedding is not None:
                    donors.append(span)
                    embeddings.append(donor_embedding)
        best, sim = self.states.best(embedding, embeddings)
        if best < 0 or sim < self.settings.threshold:
            return None
        alias = Alias(tokens, tree_paths.tokens_of(donors[best]), sim, space)
        self.aliases.add(parent, alias)
        for node in reversed(chain):  # leaf first: each is a leaf when its turn comes
            cache.token_to_kv_pool_allocator.free(node.value)
            self.stats.slots_freed += len(node.value)
            cache._delete_leaf(node)
            cache.kv_events.record_remove(node)
        self.stats.dedupes += 1
        return alias

    # ------------------------------------------------------------------ tree changes

    def on_delete(self, node: Any, evicting: bool) -> None:
        self.aliases.forget(node)  # its recorded children are gone with it

    def on_evicted(self) -> None:
        """An alias lives no longer than its donor: once eviction took any of the donor's path, the
        alias is dropped (it could no longer serve a fork, and must not pin a record)."""
        if len(self.aliases):
            self.aliases.keep_only(lambda parent, a: tree_paths.has_path(self.cache, parent, a.donor, a.namespace))
