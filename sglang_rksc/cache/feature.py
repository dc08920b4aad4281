"""The one interface through which a feature takes part in the `rksc` cache, and the ordered list of them.

`RkscRadixCache` is SGLang's `RadixCache` plus a list of `CacheFeature`s. It calls each feature at the same
points of a request's path through the tree, in the list's order, and knows nothing else of them: the cache
package imports no feature. `sglang_rksc.srt.features` builds the list from the settings.

Every method has a do-nothing default, so a feature overrides only the points it needs. The points:

- admission: `limit_match` (before the tree is read: how long a prefix the request may take), `cut_match`
  (after: the longest part of the matched slots it may continue from), `admit` (wraps a request's first
  admission match, e.g. to rewrite its prompt);
- insertion: `insert` (wraps SGLang's insertion of a request's KV into the tree);
- release: `on_release`;
- tree changes: `on_delete` (a node left the tree), `on_split`, `on_evicted` (after an eviction that freed
  tokens);
- reporting and flush: `describe` (its part of `/server_info`), `reset` (`/flush_cache`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch

Match = Callable[[Any], Any]  # MatchPrefixParams -> MatchResult


class CacheFeature:
    """A feature of the `rksc` cache; `name` is how the cache and `/server_info` know it."""

    name: ClassVar[str] = ""

    def limit_match(self, req: Any) -> int | None:
        """The longest prefix of the request that may come from the tree, or None for no limit."""
        return None

    def cut_match(self, req: Any, slots: torch.Tensor) -> int:
        """Given the KV slots of a request's match, the longest prefix of them it may continue from."""
        return int(slots.numel())

    def admit(self, params: Any, match: Match) -> Any:
        """A request's first admission match; `match` is the cache's exact match with every limit applied."""
        return match(params)

    def insert(self, req: Any, token_ids: Any, insert: Callable[[], Any]) -> Any:
        """SGLang's insertion of the request's KV for `token_ids` (`insert()`), wrapped."""
        return insert()

    def on_release(self, req: Any, checkpointed: bool) -> None:
        """A request is released (after SGLang inserted what it keeps)."""

    def on_delete(self, node: Any, evicting: bool) -> None:
        """A node left the tree (by eviction when `evicting`)."""

    def on_split(self, child: Any, new_node: Any) -> None:
        """`new_node` was split off above `child` and now holds the start of its tokens."""

    def on_evicted(self) -> None:
        """An eviction freed tokens."""

    def describe(self) -> dict[str, Any]:
        """This feature's entries in the cache's `/server_info` summary (a dict section merges with others)."""
        return {}

    def reset(self) -> None:
        """The tree was flushed."""


class FeatureList:
    """The cache's features, in the order their hooks run; looked up by name."""

    def __init__(self, features: list[CacheFeature] | None = None) -> None:
        self._features: list[CacheFeature] = []
        self._overriding: dict[str, list[CacheFeature]] = {}
        for feature in features or []:
            self.add(feature)

    def add(self, feature: CacheFeature) -> None:
        if not feature.name or self.get(feature.name) is not None:
            raise ValueError(f"a cache feature needs a unique name, got {feature.name!r}")
        self._features.append(feature)
        self._overriding.clear()

    def overriding(self, point: str) -> list[CacheFeature]:
        """The features that take part at `point` (override that method), in order; found once per point, so
        that a hot path (every admission) loops only over them."""
        if point not in self._overriding:
            default = getattr(CacheFeature, point)
            self._overriding[point] = [f for f in self._features if getattr(type(f), point) is not default]
        return self._overriding[point]

    def get(self, name: str) -> Any:
        """The feature called `name`, or None when it is off."""
        return next((f for f in self._features if f.name == name), None)

    def names(self) -> list[str]:
        return [f.name for f in self._features]

    def __iter__(self) -> Iterator[CacheFeature]:
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)


def feature_of(tree_cache: Any, name: str) -> Any:
    """The named feature of a tree cache, or None (off, or not an `rksc` cache)."""
    features = getattr(tree_cache, "features", None)
    return features.get(name) if isinstance(features, FeatureList) else None


def merge_described(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Add a feature's summary: a section (a dict) two features both report into is merged."""
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = {**into[key], **value}
        else:
            into[key] = value
