"""What dedupe recorded: under a parent node, a freed span's tokens stand for a sibling's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sglang_rksc.asks.planning import Alias


class AliasBook:
    def __init__(self) -> None:
        self.by_parent: dict[Any, list[Alias]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_parent.values())

    def __contains__(self, parent: Any) -> bool:
        return parent in self.by_parent

    def under(self, parent: Any) -> list[Alias]:
        return self.by_parent.get(parent, [])

    def add(self, parent: Any, alias: Alias) -> None:
        recorded = self.by_parent.setdefault(parent, [])
        if all((a.tokens, a.namespace) != (alias.tokens, alias.namespace) for a in recorded):
            recorded.append(alias)

    def forget(self, node: Any) -> None:
        """`node` left the tree: the aliases recorded under it go with it."""
        self.by_parent.pop(node, None)

    def keep_only(self, alive: Callable[[Any, Alias], bool]) -> None:
        for parent in list(self.by_parent):
            kept = [a for a in self.by_parent[parent] if alive(parent, a)]
            if kept:
                self.by_parent[parent] = kept
            else:
                del self.by_parent[parent]

    def reset(self) -> None:
        self.by_parent = {}
