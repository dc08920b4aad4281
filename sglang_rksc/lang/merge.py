"""`merge_branches`: group the branches of a fork whose generated spans are near-duplicates.

    from sglang_rksc.lang import merge_branches

    plans = s.fork(4)
    plans += sgl.gen("plan", max_tokens=64)
    groups = merge_branches(plans, "plan", threshold=0.95)
    for plan, size in zip(groups.representatives, groups.sizes):
        plan += ...            # continue one branch per group; `size` weights its vote
    per_branch = groups.expand(results_of_representatives)

The similarity is the dot product of the spans' pooled hidden states, which a
server started with `--rksc-span-embeddings on` returns in each generation's
meta_info (`rksc_span`, computed from the forwards already run). Each branch,
in fork order, joins the group whose representative (its first member) is
most similar, if that similarity reaches `threshold`; otherwise it starts a
group. Against a server that returns no span embeddings (stock SGLang, or the
flag off) nothing is merged: every branch is its own group, and `note` (also
logged once per server) says why. This is approximate: the members' own later
text is never generated; they take their representative's results. A program
that merges finished texts (self-consistency's solutions) passes `same` (their
answers), so that only branches that agree are merged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sglang_rksc.cache import span_vector

logger = logging.getLogger(__name__)
T = TypeVar("T")
NO_EMBEDDINGS = (
    "the server returned no span embeddings (start it with sglang-rksc's launcher, --radix-cache-backend rksc "
    "--rksc-span-embeddings on); nothing was merged"
)
_warned: set[str] = set()


@dataclass(frozen=True)
class BranchGroups:
    """The branches of one fork, grouped. `groups` hold branch indices, representative first."""

    states: tuple[Any, ...]
    groups: tuple[tuple[int, ...], ...]
    similarities: tuple[float, ...]  # per branch: to its representative (1.0 for a representative)
    note: str | None = None  # why nothing was merged, when the server could not say

    @classmethod
    def alone(cls, states: Sequence[Any], note: str | None = None) -> BranchGroups:
        """Every branch its own group (nothing merged)."""
        return cls(tuple(states), tuple((i,) for i in range(len(states))), (1.0,) * len(states), note)

    def __post_init__(self) -> None:
        members = sorted(i for group in self.groups for i in group)
        assert members == list(range(len(self.states))), "every branch is in exactly one group"

    @property
    def representatives(self) -> list[Any]:
        return [self.states[group[0]] for group in self.groups]

    @property
    def sizes(self) -> list[int]:
        """Branches each representative stands for (vote weights); they add up to the branch count."""
        return [len(group) for group in self.groups]

    @property
    def merged(self) -> int:
        """Branches that are not continued (they take their representative's results)."""
        return len(self.states) - len(self.groups)

    def group_of(self, branch: int) -> int:
        for g, group in enumerate(self.groups):
            if branch in group:
                return g
        raise IndexError(f"no branch {branch} among {len(self.states)}")

    def expand(self, values: Sequence[T]) -> list[T]:
        """Per-branch values from one value per representative (a member gets its representative's)."""
        if len(values) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} values (one per group), got {len(values)}")
        return [values[self.group_of(i)] for i in range(len(self.states))]


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"merge threshold must be a number in [-1, 1], got {threshold!r}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"merge threshold must be a similarity in [-1, 1], got {threshold}")
    return float(threshold)


def _fork_states(states: Any) -> list[Any]:
    if hasattr(states, "stream_executor"):
        raise ValueError("merge_branches takes the states of a fork (a list or the fork itself), not one state")
    group = list(getattr(states, "states", None) or (states if isinstance(states, Iterable) else []))
    if not group:
        raise ValueError(f"merge_branches takes the non-empty states of a fork, got {type(states).__name__}")
    for i, state in enumerate(group):
        executor = getattr(state, "stream_executor", None)
        if executor is None:
            raise ValueError(f"branch {i} is a {type(state).__name__}, not a program state")
        if executor.fork_start_text_pos is None:
            raise ValueError(f"branch {i} is not a forked state (merge_branches groups the branches of a fork)")
    return group


def span_vectors(states: Sequence[Any], var: str) -> list[list[float] | None]:
    """The decoded `rksc_span` of each state's generation `var` (None where the server sent none)."""
    vectors: list[list[float] | None] = []
    for i, state in enumerate(states):
        meta = state.get_meta_info(var)
        if not isinstance(meta, dict):
            raise ValueError(f"branch {i} has no generation named {var!r}")
        info = span_vector.entry(meta)
        vectors.append(span_vector.decode(info) if info is not None else None)
    return vectors


def group_by_similarity(
    vectors: Sequence[Sequence[float] | None], threshold: float, keys: Sequence[Hashable] | None = None
) -> tuple[list[list[int]], list[float]]:
    """Greedy grouping in order: each vector joins its most similar representative at or above
    `threshold`, else starts a group; a missing vector is always alone. With `keys` (one per vector),
    a vector joins only a representative whose key equals its own."""
    threshold = _check_threshold(threshold)
    if keys is not None and len(keys) != len(vectors):
        raise ValueError(f"expected {len(vectors)} keys (one per branch), got {len(keys)}")
    groups: list[list[int]] = []
    similarities = [1.0] * len(vectors)
    for i, vector in enumerate(vectors):
        best, best_sim = None, -math.inf
        if vector is not None:
            for g, group in enumerate(groups):
                rep = vectors[group[0]]
                if rep is not None and (keys is None or keys[group[0]] == keys[i]):
                    sim = span_vector.similarity(vector, rep)
                    if sim > best_sim:
                        best, best_sim = g, sim
        if best is not None and best_sim >= threshold:
            groups[best].append(i)
            similarities[i] = best_sim
        else:
            groups.append([i])
    return groups, similarities


def merge_branches(
    states: Any, var: str, threshold: float, *, same: Callable[[str], Hashable] | None = None
) -> BranchGroups:
    """Group a fork's branches by the similarity of their generation `var` (waits for it).

    `same`, for a generation whose outcome can be read from its text (a finished solution's answer):
    branches join a group only where `same` of their text equals the representative's. Similar spans
    can end in different numbers; a vote that merged them would lose an answer that was generated."""
    threshold = _check_threshold(threshold)
    if not isinstance(var, str) or not var:
        raise ValueError(f"merge_branches needs the name of the branches' generation, got {var!r:.80}")
    group = _fork_states(states)
    vectors = span_vectors(group, var)
    note = None
    if all(v is None for v in vectors):
        note = NO_EMBEDDINGS
        url = str(getattr(group[0].stream_executor.backend, "base_url", ""))
        if url not in _warned:
            _warned.add(url)
            logger.warning("sglang-rksc: merge_branches at %s: %s", url or "this backend", note)
    keys = [same(state[var]) for state in group] if same is not None else None
    groups, similarities = group_by_similarity(vectors, threshold, keys)
    return BranchGroups(tuple(group), tuple(tuple(g) for g in groups), tuple(similarities), note)
