"""Where a request may fork from a cached sibling span, decided on token lists alone.

A request's tokens leave the tree at node P (after `prefix_len` tokens); its
next span S may be replaced by a donor span C cached under P, so the request
becomes P + C + the rest and hits C's KV exactly. Two sources say S and C are
alike: an `Alias` (S is a span this server produced and deduplicated into C;
an exact token match) and the zero-forward probe (S and C compared in the
model's input-embedding space, by a scoring function the caller passes). For
the probe, S ends where the request rejoins C's path: the two share
`ANCHOR_TOKENS` tokens again, and then stay together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ANCHOR_TOKENS = 6  # tokens the request and the donor path share where the request rejoins it


@dataclass(frozen=True)
class SpanRules:
    """Which spans may stand for each other at all."""

    min_span: int  # shorter spans never fork or dedupe
    length_ratio: float  # nor do spans whose lengths differ by more than this factor

    def comparable(self, n: int, m: int) -> bool:
        return min(n, m) >= self.min_span and max(n, m) <= self.length_ratio * min(n, m)


@dataclass(frozen=True)
class Alias:
    """Under a parent node, a span's tokens stand for a sibling's (the donor's)."""

    tokens: tuple[int, ...]  # the replaced span
    donor: tuple[int, ...]  # the span cached in its place
    similarity: float
    namespace: tuple[Any, Any]  # (extra_key, cache_salt): an alias never serves another namespace
    # "dedupe": the span was computed, then freed into the donor; "fork": a request's span was rewritten
    # into the donor at admission, so the branch's later requests (the span followed by anything) are too.
    origin: str = "dedupe"


@dataclass(frozen=True)
class ForkPlan:
    source: str  # "alias" or "probe"
    similarity: float
    prefix_len: int  # tokens of P
    span_len: int  # tokens of S, replaced
    donor: tuple[int, ...]  # tokens of C, put in their place
    new_ids: list[int] = field(repr=False)


def _replace(prompt: Sequence[int], prefix_len: int, span_len: int, donor: Sequence[int]) -> list[int]:
    return [*prompt[:prefix_len], *donor, *prompt[prefix_len + span_len :]]


def aliases_naming(
    prompt: Sequence[int], prefix_len: int, aliases: Iterable[Alias], space: tuple[Any, Any]
) -> list[Alias]:
    """The aliases of this namespace whose span starts the request's rest."""
    rest = tuple(prompt[prefix_len:])
    return [a for a in aliases if a.namespace == space and rest[: len(a.tokens)] == a.tokens]


def plan_from_aliases(
    prompt: Sequence[int],
    prefix_len: int,
    aliases: Iterable[Alias],
    space: tuple[Any, Any],
    donor_cached: Callable[[Alias], bool],
) -> ForkPlan | None:
    """The first alias naming the request's rest whose donor is still cached. A fork's alias makes the
    plan a `followup` (the branch's next request), a dedupe's an `alias` fork."""
    for alias in aliases_naming(prompt, prefix_len, aliases, space):
        if donor_cached(alias):
            source = "followup" if alias.origin == "fork" else "alias"
            new_ids = _replace(prompt, prefix_len, len(alias.tokens), alias.donor)
            return ForkPlan(source, alias.similarity, prefix_len, len(alias.tokens), alias.donor, new_ids)
    return None


def stays_joined(rest: Sequence[int], i: int, path: Sequence[int], j: int) -> bool:
    """A real rejoin, not a chance n-gram: the two agree for 2 anchors' worth after it, or to an end."""
    need = min(2 * ANCHOR_TOKENS, len(rest) - i, len(path) - j)
    return list(rest[i : i + need]) == list(path[j : j + need])


def align(rest: Sequence[int], donor_path: Sequence[int], rules: SpanRules) -> tuple[int, int] | None:
    """Where the request rejoins the donor's path: (i, j) with rest[i:i+k] == donor_path[j:j+k], so
    that rest[:i] is the counterpart of donor_path[:j]. The shortest donor span wins; both lengths
    respect the span rules."""
    k, lo = ANCHOR_TOKENS, rules.min_span
    starts: dict[tuple[int, ...], list[int]] = {}
    for i in range(lo, len(rest) - k + 1):
        starts.setdefault(tuple(rest[i : i + k]), []).append(i)
    for j in range(lo, len(donor_path) - k + 1):
        for i in starts.get(tuple(donor_path[j : j + k]), ()):
            if max(i, j) <= rules.length_ratio * min(i, j) and stays_joined(rest, i, donor_path, j):
                return i, j
    return None


def probe_counterparts(
    rest: Sequence[int], donor_path: Sequence[int], donor_is_leaf: bool, rules: SpanRules
) -> tuple[int, tuple[int, ...]] | None:
    """(end of S in `rest`, the donor span C) for one candidate path, or None when none fits.

    S ends where the request rejoins the path; a leaf donor (a prompt with nothing after it) may also
    stand for a request that ends with its span."""
    aligned = align(rest, donor_path, rules)
    if aligned is not None:
        end, donor = aligned[0], tuple(donor_path[: aligned[1]])
    elif donor_is_leaf and rules.comparable(len(rest), len(donor_path)):
        end, donor = len(rest), tuple(donor_path)
    else:
        return None
    if len(donor) < rules.min_span or tuple(rest[:end]) == donor:
        return None
    return end, donor


def best_probe_plan(
    prompt: Sequence[int],
    prefix_len: int,
    candidates: Iterable[tuple[int, tuple[int, ...]]],
    score: Callable[[Sequence[int], Sequence[int]], float],
    threshold: float,
) -> ForkPlan | None:
    """The most similar (span, donor) pair at or above `threshold`, as a plan."""
    rest = prompt[prefix_len:]
    best: tuple[float, tuple[int, ...], int] | None = None
    for end, donor in candidates:
        sim = score(rest[:end], donor)
        if sim >= threshold and (best is None or sim > best[0]):
            best = (sim, donor, end)
    if best is None:
        return None
    sim, donor, end = best
    return ForkPlan("probe", sim, prefix_len, end, donor, _replace(prompt, prefix_len, end, donor))


def fits_context(plan: ForkPlan, max_new_tokens: int | None, context_len: int | None) -> bool:
    """A rewritten prompt plus the generation still fits the model's context."""
    return context_len is None or len(plan.new_ids) + (max_new_tokens or 0) <= context_len
