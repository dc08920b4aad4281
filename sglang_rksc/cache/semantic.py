"""ASKS: a radix cache whose nodes also match approximately.

`SemanticRadixCache` is SGLang's `RadixCache` plus two mechanisms, both off
unless `RkscConfig.semantic` is on (then it is exactly `RadixCache`):

Dedupe at release. When a request is released and its last node N (for a
generation, its output span) is a free leaf whose pooled hidden states are
within `threshold` of a sibling C under the same parent P, N's KV slots are
freed at once and an alias (P, N's tokens) -> C's tokens is recorded.

Fork at admission. When a request's tokens leave the tree at node P, its next
span S may fork from a child C of P: its prompt is rewritten to P + C + the
rest, so the scheduler sees an ordinary exact hit on C's KV. Where the
embedding of S comes from, since no forward has run on S yet:
- `alias`: S starts with the tokens of a span this server produced, embedded
  from its hidden states and deduplicated into C (exact token match, the
  similarity was measured at dedupe time);
- `probe`: the mean input-embedding rows of S against those of the donor
  span's tokens (a zero-forward probe in its own space, with its own
  `probe_threshold`). S ends where the request rejoins the donor's path (the
  two share `ANCHOR_TOKENS` tokens again), or with the request when the donor
  is a leaf with nothing after it.

Span vectors (`RkscConfig.span_embeddings`, independent of `semantic`): at release, the pooled states
of the request's output slots go into its meta_info (`rksc_span`), for the frontend's
`merge_branches`; read-only, before dedupe can free those slots.

Invariants kept: every KV slot belongs to one node (a fork reuses C's slots
through an ordinary match; a dedupe frees N's slots and deletes N), a slot is
freed once (through the allocator, for unlocked leaves only), locked nodes
are never touched, and nothing crosses a namespace (`extra_key`,
`cache_salt`): only children in the request's own namespace are compared.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, EvictResult, MatchPrefixParams, MatchResult
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixKey, TreeNode

from sglang_rksc.cache import span_vector
from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.cache.radix_cache import RkscRadixCache
from sglang_rksc.cache.request_options import request_options
from sglang_rksc.srt.config import RkscConfig

logger = logging.getLogger(__name__)

META_KEY = "rksc_semantic"  # the response's meta_info key
CLIENT_PROMPT_LEN = "_rksc_client_prompt_len"  # set on a rewritten request: its prompt length as sent
ANCHOR_TOKENS = 6  # tokens the request and the donor path share where the request rejoins it


@dataclass
class SemanticStats:
    admissions: int = 0  # requests checked at admission
    exact_hit_tokens: int = 0  # tokens matched exactly at admission, before any fork
    forks_alias: int = 0
    forks_probe: int = 0
    tokens_reused: int = 0  # prompt tokens served beyond the exact match thanks to a fork
    tokens_replaced: int = 0  # request tokens replaced by donor tokens
    dedupes: int = 0
    slots_freed: int = 0  # KV slots freed by dedupe

    @property
    def semantic_hits(self) -> int:
        return self.forks_alias + self.forks_probe

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "semantic_hits": self.semantic_hits}


@dataclass(frozen=True)
class Alias:
    tokens: tuple[int, ...]  # the deduplicated span, under its parent
    donor: tuple[int, ...]  # the sibling it was deduplicated into
    similarity: float
    namespace: tuple[Any, Any]  # (extra_key, cache_salt): an alias never serves another namespace


@dataclass(frozen=True)
class ForkPlan:
    source: str  # "alias" or "probe"
    similarity: float
    prefix_len: int  # tokens of P
    span_len: int  # tokens of S, replaced
    donor: tuple[int, ...]  # tokens of C, put in their place
    new_ids: list[int] = field(repr=False)


def _namespace(key: RadixKey) -> tuple[Any, Any]:
    return key.extra_key, key.cache_salt


def _tokens(key: RadixKey) -> tuple[int, ...]:
    return tuple(key.raw_token_ids())


class SemanticRadixCache(RkscRadixCache):
    """`RadixCache` with semantic fork at admission and dedupe at release (see the module doc)."""

    def __init__(
        self,
        params: CacheInitParams,
        config: RkscConfig | None = None,
        *,
        states: SlotStates | None = None,
        probe: TokenProbe | None = None,
        context_len: int | None = None,
    ) -> None:
        self.aliases: dict[TreeNode, list[Alias]] = {}
        super().__init__(params)
        self.config = config or RkscConfig()
        if self.config.semantic and self.page_size != 1:
            raise ValueError("semantic sharing (--rksc-semantic on) needs --page-size 1")
        self.states = states
        self.probe = probe
        self.context_len = context_len
        self.stats = SemanticStats()

    @classmethod
    def create_simulated(
        cls, disable: bool = False, mock_allocator: Any = None, page_size: int = 1, **kwargs: Any
    ) -> SemanticRadixCache:
        params = CacheInitParams(
            disable=disable, req_to_token_pool=None, token_to_kv_pool_allocator=mock_allocator, page_size=page_size
        )
        return cls(params, **kwargs)

    @property
    def semantic(self) -> bool:
        return self.config.semantic and not self.disable

    def reset(self) -> None:
        super().reset()
        self.aliases = {}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["semantic"] = self.semantic
        if self.semantic:
            out["config"] = asdict(self.config)
            out["stats"] = self.stats.as_dict()
            out["aliases"] = sum(len(v) for v in self.aliases.values())
        return out

    # ------------------------------------------------------------------ tree helpers

    def _has_path(self, node: TreeNode, tokens: Sequence[int], namespace: tuple[Any, Any]) -> bool:
        """Whether `tokens` are cached below `node`, in `namespace` (without splitting anything)."""
        rest = RadixKey(array("q", tokens), extra_key=namespace[0], cache_salt=namespace[1])
        while len(rest) > 0:
            child = node.children.get(rest.child_key(self.page_size))
            if child is None:
                return False
            matched = child.key.match(rest, page_size=self.page_size)
            if matched == len(rest):
                return True
            if matched < len(child.key):
                return False
            node, rest = child, rest[matched:]
        return True

    def _donor_spans(self, node: TreeNode) -> list[list[TreeNode]]:
        """Candidate donor spans starting at `node`: the single-child chain below it, cut at each
        node boundary (a donor span ends where its tree path ends or continues)."""
        chain = [node]
        while len(chain[-1].children) == 1:
            chain.append(next(iter(chain[-1].children.values())))
        return [chain[: i + 1] for i in range(len(chain))]

    def _span_up(self, leaf: TreeNode) -> list[TreeNode]:
        """The unlocked nodes above `leaf` up to its branch point (top first): the span it ends."""
        chain = [leaf]
        parent = leaf.parent
        while parent is not self.root_node and len(parent.children) == 1 and parent.lock_ref == 0:
            chain.append(parent)
            parent = parent.parent
        chain.reverse()
        return chain

    @staticmethod
    def _span_tokens(chain: Sequence[TreeNode]) -> tuple[int, ...]:
        return tuple(t for node in chain for t in node.key.raw_token_ids())

    def _span_embedding(self, chain: Sequence[TreeNode]) -> Any:
        return self.states.span_embedding(torch.cat([node.value for node in chain]))

    def _delete_leaf(self, node: TreeNode) -> None:
        super()._delete_leaf(node)
        self.aliases.pop(node, None)  # its recorded children are gone with it

    def evict(self, params: EvictParams) -> EvictResult:
        result = super().evict(params)
        if result.num_tokens_evicted and self.aliases:
            self._drop_orphan_aliases()
        return result

    def _drop_orphan_aliases(self) -> None:
        """An alias lives no longer than its donor: once eviction took any of the donor's path,
        the alias is dropped (it could no longer serve a fork, and must not pin a record)."""
        for parent in list(self.aliases):
            alive = [a for a in self.aliases[parent] if self._has_path(parent, a.donor, a.namespace)]
            if alive:
                self.aliases[parent] = alive
            else:
                del self.aliases[parent]

    # ------------------------------------------------------------------ admission

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        req = params.req
        if req is None or not self.semantic or getattr(req, "_rksc_admitted", False):
            return super().match_prefix(params)
        # Once per request: the scheduler matches again (priority, admission, retraction).
        req._rksc_admitted = True
        exact = super().match_prefix(MatchPrefixParams(key=params.key, cow_mamba=params.cow_mamba))
        self.stats.admissions += 1
        self.stats.exact_hit_tokens += exact.device_prefix_len
        skipped = self._ineligible(req)
        plan = None if skipped else self._plan_fork(req, exact)
        if plan is None:
            self._report(req, {"fork": False, **({"skipped": skipped} if skipped else {})})
            return exact
        self._rewrite(req, plan)
        key = RadixKey(
            req.full_untruncated_fill_ids,
            req.extra_key,
            is_bigram=params.key.is_bigram,
            limit=None if params.key.limit is None else req._compute_max_prefix_len(len(req.full_untruncated_fill_ids)),
            cache_salt=req.cache_salt,
        )
        result = super().match_prefix(MatchPrefixParams(key=key, cow_mamba=params.cow_mamba, req=req))
        reused = max(0, result.device_prefix_len - exact.device_prefix_len)
        if plan.source == "alias":
            self.stats.forks_alias += 1
        else:
            self.stats.forks_probe += 1
        self.stats.tokens_reused += reused
        self.stats.tokens_replaced += plan.span_len
        self._report(
            req,
            {
                "fork": True,
                "source": plan.source,
                "similarity": round(plan.similarity, 4),
                "fork_at": plan.prefix_len,
                "replaced_tokens": plan.span_len,
                "donor_tokens": len(plan.donor),
                "reused_tokens": reused,
                "prompt_tokens_served": len(req.origin_input_ids),
            },
        )
        return result

    def _ineligible(self, req: Any) -> str | None:
        """Why this request must keep its own tokens, or None."""
        options = request_options(req)
        if options.get("semantic") is False:
            return "opted out"
        if options.get("fork") is False:
            return "fork opted out"
        if len(req.output_ids) > 0:
            return "resumed request"
        if req.return_logprob and req.logprob_start_len >= 0:
            return "input logprobs requested"  # they would describe donor tokens
        if getattr(req, "multimodal_inputs", None) is not None:
            return "multimodal"
        if getattr(req, "session", None) is not None:
            return "session"
        if getattr(req, "positional_embed_overrides", None) is not None:
            return "embedding overrides"
        if req.is_dllm():
            return "diffusion LM"
        return None

    def _plan_fork(self, req: Any, exact: MatchResult) -> ForkPlan | None:
        parent = exact.last_device_node
        prefix_len = exact.device_prefix_len
        prompt = list(req.origin_input_ids)
        rest = prompt[prefix_len:]
        if len(rest) < self.config.min_span or not parent.children and parent not in self.aliases:
            return None
        namespace = (req.extra_key, req.cache_salt)
        plan = self._plan_from_alias(parent, prompt, prefix_len, namespace)
        if plan is None and self.config.probe and self.probe is not None:
            plan = self._plan_from_probe(parent, prompt, prefix_len, namespace)
        if plan is None:
            return None
        budget = len(plan.new_ids) + (req.sampling_params.max_new_tokens or 0)
        if self.context_len is not None and budget > self.context_len:
            return None
        return plan

    def _plan_from_alias(
        self, parent: TreeNode, prompt: list[int], prefix_len: int, namespace: tuple[Any, Any]
    ) -> ForkPlan | None:
        if not self.config.dedupe:
            return None
        rest = tuple(prompt[prefix_len:])
        for alias in self.aliases.get(parent, ()):
            if alias.namespace != namespace or rest[: len(alias.tokens)] != alias.tokens:
                continue
            if self._has_path(parent, alias.donor, namespace):
                new_ids = [*prompt[:prefix_len], *alias.donor, *rest[len(alias.tokens) :]]
                return ForkPlan("alias", alias.similarity, prefix_len, len(alias.tokens), alias.donor, new_ids)
        return None

    def _align(self, rest: Sequence[int], donor_path: Sequence[int]) -> tuple[int, int] | None:
        """Where the request rejoins the donor's path: (i, j) with rest[i:i+k] == donor_path[j:j+k],
        so that S = rest[:i] is the counterpart of the donor span donor_path[:j]. The shortest donor
        span wins; both lengths respect `min_span` and `length_ratio`."""
        k, ratio, lo = ANCHOR_TOKENS, self.config.length_ratio, self.config.min_span
        starts: dict[tuple[int, ...], list[int]] = {}
        for i in range(lo, len(rest) - k + 1):
            starts.setdefault(tuple(rest[i : i + k]), []).append(i)
        for j in range(lo, len(donor_path) - k + 1):
            for i in starts.get(tuple(donor_path[j : j + k]), ()):
                if max(i, j) <= ratio * min(i, j) and self._stays_joined(rest, i, donor_path, j):
                    return i, j
        return None

    @staticmethod
    def _stays_joined(rest: Sequence[int], i: int, path: Sequence[int], j: int) -> bool:
        """A real rejoin, not a chance n-gram: the two agree for 2 anchors' worth after it, or to an end."""
        need = min(2 * ANCHOR_TOKENS, len(rest) - i, len(path) - j)
        return list(rest[i : i + need]) == list(path[j : j + need])

    def _plan_from_probe(
        self, parent: TreeNode, prompt: list[int], prefix_len: int, namespace: tuple[Any, Any]
    ) -> ForkPlan | None:
        rest = prompt[prefix_len:]
        best: tuple[float, tuple[int, ...], int] | None = None
        for child in parent.children.values():
            if _namespace(child.key) != namespace:
                continue
            path = self._span_tokens(self._donor_spans(child)[-1])
            aligned = self._align(rest, path)
            if aligned is not None:
                end, donor = aligned[0], path[: aligned[1]]
            elif not child.children and max(len(rest), len(path)) <= self.config.length_ratio * min(
                len(rest), len(path)
            ):
                # A leaf donor (a prompt with nothing after it) and a request that ends with its span.
                end, donor = len(rest), path
            else:
                continue
            if len(donor) < self.config.min_span or tuple(rest[:end]) == donor:
                continue
            _, sim = self.probe.best(self.probe.embed(rest[:end]), [self.probe.embed(donor)])
            if sim >= self.config.probe_threshold and (best is None or sim > best[0]):
                best = (sim, donor, end)
        if best is None:
            return None
        sim, donor, end = best
        new_ids = [*prompt[:prefix_len], *donor, *rest[end:]]
        return ForkPlan("probe", sim, prefix_len, end, donor, new_ids)

    def _rewrite(self, req: Any, plan: ForkPlan) -> None:
        """Make the request's prompt P + C + rest, consistently in every field that holds it."""
        old = req.origin_input_ids
        # The response keeps reporting the client's own prompt length: SGLang's frontend places
        # the logprobs of a `select` after a prefix commit by it (see CLIENT_PROMPT_LEN).
        setattr(req, CLIENT_PROMPT_LEN, len(old))
        new = array("q", plan.new_ids) if isinstance(old, array) else list(plan.new_ids)
        req.origin_input_ids = new
        if req.origin_input_ids_unpadded is old:
            req.origin_input_ids_unpadded = new
        req.full_untruncated_fill_ids = new + req.output_ids

    @staticmethod
    def _report(req: Any, info: dict[str, Any], key: str = META_KEY) -> None:
        """Put facts in the response's meta_info (a request-level customized info); the fork's by default."""
        if req.customized_info is None:
            req.customized_info = {}
        req.customized_info[key] = [info]

    # ------------------------------------------------------------------ release

    def on_release(self, req: Any, *, checkpointed: bool) -> None:
        # Before the base records the result for reuse (a replay carries the span too) and
        # before dedupe frees the span's slots.
        if checkpointed and self.config.span_embeddings and self.states is not None and not self.disable:
            self._report_span(req)
        super().on_release(req, checkpointed=checkpointed)
        if not (checkpointed and self.semantic and self.config.dedupe and self.states is not None):
            return
        if self._ineligible_for_dedupe(req):
            return
        self.dedupe(req.last_node)

    def output_slots(self, req: Any) -> torch.Tensor | None:
        """KV slots of the request's output as the tree holds them now (its last token has none)."""
        if req.last_node is None or not self._attached(req.last_node):
            return None
        path = self.path_device_indices(req.last_node)
        prompt_len = len(req.origin_input_ids)
        return path[prompt_len:] if len(path) > prompt_len else None

    def _report_span(self, req: Any) -> None:
        """Put the pooled states of the output span in the response (`rksc_span`), for merging."""
        slots = self.output_slots(req)
        embedding = None if slots is None else self.states.span_embedding(slots)
        if embedding is None:
            return
        info = span_vector.encode(embedding, self.states.weights, tokens=int(slots.numel()))
        self._report(req, info, key=span_vector.META_KEY)

    def _ineligible_for_dedupe(self, req: Any) -> bool:
        return request_options(req).get("semantic") is False or req.last_node is None

    def dedupe(self, leaf: TreeNode) -> Alias | None:
        """Free the span that ends in `leaf` into an alias of its nearest sibling span, if one is
        within the threshold. The span runs up from `leaf` to its branch point P; it must be
        unlocked and end in a leaf, so no request holds any of its slots."""
        if leaf is self.root_node or leaf.lock_ref > 0 or leaf.children or not self._attached(leaf):
            return None
        chain = self._span_up(leaf)
        tokens = self._span_tokens(chain)
        n = len(tokens)
        if n < self.config.min_span:
            return None
        embedding = self._span_embedding(chain)
        if embedding is None:
            return None
        parent, namespace = chain[0].parent, _namespace(leaf.key)
        donors, embeddings = [], []
        for sibling in parent.children.values():
            if sibling is chain[0] or _namespace(sibling.key) != namespace:
                continue
            for span in self._donor_spans(sibling):
                m = sum(len(node.key) for node in span)
                if m < self.config.min_span or max(n, m) > self.config.length_ratio * min(n, m):
                    continue
                donor_embedding = self._span_embedding(span)
                if donor_embedding is not None:
                    donors.append(span)
                    embeddings.append(donor_embedding)
        best, sim = self.states.best(embedding, embeddings)
        if best < 0 or sim < self.config.threshold:
            return None
        alias = Alias(tokens, self._span_tokens(donors[best]), sim, namespace)
        recorded = self.aliases.setdefault(parent, [])
        if all((a.tokens, a.namespace) != (alias.tokens, alias.namespace) for a in recorded):
            recorded.append(alias)
        for node in reversed(chain):  # leaf first: each is a leaf when its turn comes
            self.token_to_kv_pool_allocator.free(node.value)
            self.stats.slots_freed += len(node.value)
            self._delete_leaf(node)
            self.kv_events.record_remove(node)
        self.stats.dedupes += 1
        return alias
