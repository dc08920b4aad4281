"""Where drafts come from: the token sequences a namespace has seen, indexed by their n-grams.

Every request's tokens (prompt, then output as it grows) are a sequence here, and finished sequences stay
until the store is over its token budget (oldest finished first; running ones are never evicted). A draft
for a request is what followed, somewhere in its namespace, the longest stretch that matches the end of the
request's own tokens:

- `self`: in the request's own prompt or output (a quote, a repeated line);
- `branch`: in a sequence that shares the request's prefix (a sibling branch, an earlier step of the same
  program: what the radix tree holds beside the request's path, and what running siblings are writing);
- `other`: in another program's sequence of the same namespace.

A namespace is (`extra_key`, `cache_salt`): one tenant's tokens never draft for another's.
No SGLang import.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

SOURCES = ("self", "branch", "other")
SEQUENCES_PER_GRAM = 16  # most recent sequences kept per n-gram ...
OCCURRENCES_PER_SEQUENCE = 2  # ... and their last occurrences of it (a frequent n-gram keeps other sequences)
BRANCH_PREFIX = 32  # shared leading tokens that make another sequence a branch of the same program
LONGEST_MATCH = 64  # backward comparison cap when ranking candidates


@dataclass(frozen=True)
class Draft:
    tokens: tuple[int, ...]
    source: str  # one of SOURCES
    match: int  # matched tokens before the draft


@dataclass
class _Sequence:
    tokens: list[int]
    running: bool = True


@dataclass
class _Space:
    sequences: OrderedDict[Hashable, _Sequence] = field(default_factory=OrderedDict)
    # n-gram -> sequence -> the positions just after its last occurrences there
    index: dict[tuple[int, ...], OrderedDict[Hashable, list[int]]] = field(default_factory=dict)
    tokens: int = 0


class DraftStore:
    def __init__(self, capacity_tokens: int, gram: int = 2) -> None:
        self.capacity_tokens = capacity_tokens
        self.gram = gram
        self._spaces: dict[Hashable, _Space] = {}
        self.evicted_tokens = 0

    @property
    def tokens(self) -> int:
        return sum(space.tokens for space in self._spaces.values())

    def length(self, namespace: Hashable, key: Hashable) -> int | None:
        """Tokens held for request `key` (None: not held)."""
        space = self._spaces.get(namespace)
        seq = space.sequences.get(key) if space is not None else None
        return None if seq is None else len(seq.tokens)

    def update(self, namespace: Hashable, key: Hashable, tokens: Sequence[int]) -> None:
        """The request `key` now holds `tokens` (its prompt and output so far): index what is new."""
        space = self._spaces.setdefault(namespace, _Space())
        seq = space.sequences.get(key)
        old = 0 if seq is None else len(seq.tokens)
        if seq is not None and (len(tokens) < old or list(tokens[: min(old, 8)]) != seq.tokens[: min(old, 8)]):
            self._drop(space, key)  # retracted or rewritten: index it afresh
            old = 0
        self._append(space, key, tokens[old:])

    def extend(self, namespace: Hashable, key: Hashable, tokens: Sequence[int]) -> None:
        """Append tokens to a known sequence (its newest output)."""
        space = self._spaces.get(namespace)
        if space is not None and key in space.sequences:
            self._append(space, key, tokens)

    def _append(self, space: _Space, key: Hashable, tokens: Sequence[int]) -> None:
        """Add tokens at the end of `key`'s sequence (created if new), index the n-grams they end, evict."""
        seq = space.sequences.get(key)
        if seq is None:
            seq = space.sequences[key] = _Sequence([])
        else:
            space.sequences.move_to_end(key)
            seq.running = True  # a retracted request that runs again is not evictable
        old = len(seq.tokens)
        seq.tokens.extend(tokens)
        space.tokens += len(tokens)
        # the n-grams ending after the old end (the one ending there was indexed with it)
        for end in range(max(old + 1, self.gram), len(seq.tokens) + 1):
            holders = space.index.setdefault(tuple(seq.tokens[end - self.gram : end]), OrderedDict())
            ends = holders.setdefault(key, [])
            holders.move_to_end(key)
            ends.append(end)
            del ends[:-OCCURRENCES_PER_SEQUENCE]
            if len(holders) > SEQUENCES_PER_GRAM:
                holders.popitem(last=False)
        self._evict()

    def finish(self, namespace: Hashable, key: Hashable) -> None:
        """The request is done: its sequence stays as drafting material until evicted."""
        space = self._spaces.get(namespace)
        if space is not None and key in space.sequences:
            space.sequences[key].running = False

    def propose(self, namespace: Hashable, key: Hashable, limit: int) -> Draft | None:
        """The draft of at most `limit` tokens for request `key`, from the best match of its tokens' end."""
        space = self._spaces.get(namespace)
        if space is None or limit < 1 or key not in space.sequences:
            return None
        own = space.sequences[key].tokens
        if len(own) < self.gram:
            return None
        best: tuple[tuple[int, int, int], str, list[int], int] | None = None
        holders = space.index.get(tuple(own[-self.gram :]), {})
        occurrences = [(k, end) for k, ends in reversed(holders.items()) for end in reversed(ends)]
        for rank, (other_key, end) in enumerate(occurrences):
            other = space.sequences.get(other_key)
            if other is None or end >= len(other.tokens) or (other_key == key and end == len(own)):
                continue
            source = self._source(own, key, other.tokens, other_key)
            # the longest match; on a tie the closest relative (self, then branch), then the most recent
            score = (_common_suffix(own, other.tokens, end), -SOURCES.index(source), -rank)
            if best is None or score > best[0]:
                best = (score, source, other.tokens, end)
        if best is None:
            return None
        (match, _, _), source, other_tokens, end = best
        return Draft(tuple(other_tokens[end : end + limit]), source, match)

    def clear(self) -> None:
        self._spaces.clear()

    def _source(self, own: list[int], key: Hashable, other: list[int], other_key: Hashable) -> str:
        if other_key == key:
            return "self"
        shared = 0
        for a, b in zip(own[:BRANCH_PREFIX], other[:BRANCH_PREFIX], strict=False):
            if a != b:
                break
            shared += 1
        return "branch" if shared >= min(BRANCH_PREFIX, len(own)) else "other"

    def _evict(self) -> None:
        while self.tokens > self.capacity_tokens:
            victim = None
            for namespace, space in self._spaces.items():
                for key, seq in space.sequences.items():  # oldest first
                    if not seq.running:
                        victim = (namespace, space, key)
                        break
                if victim:
                    break
            if victim is None:
                return  # only running sequences: they are never evicted
            namespace, space, key = victim
            self.evicted_tokens += len(space.sequences[key].tokens)
            self._drop(space, key)
            if not space.sequences:
                del self._spaces[namespace]

    def _drop(self, space: _Space, key: Hashable) -> None:
        seq = space.sequences.pop(key, None)
        if seq is None:
            return
        space.tokens -= len(seq.tokens)
        for end in range(self.gram, len(seq.tokens) + 1):
            gram = tuple(seq.tokens[end - self.gram : end])
            holders = space.index.get(gram)
            if holders is not None and holders.pop(key, None) is not None and not holders:
                del space.index[gram]


def _common_suffix(own: list[int], other: list[int], end: int) -> int:
    """How many tokens before `other[end]` equal the end of `own`."""
    n = 0
    while n < LONGEST_MATCH and n < len(own) and n < end and own[-1 - n] == other[end - 1 - n]:
        n += 1
    return n
