"""RSBCM: eviction ordered by the reasoning structure (`--radix-eviction-policy rsbcm`).

SGLang's `RadixCache.evict` pops evictable leaves (unlocked, no children) from
a heap ordered by the strategy's `get_priority`, smallest first, and frees
each popped leaf's KV slots through the allocator; a parent whose last child
went is pushed in turn. This strategy only supplies that order:

    priority(node) = (rank, value, last_access_time)        smallest is evicted first
    rank  = 0 if marked rejected, 1 if marked finished, 2 otherwise
    value = (1 + reuse_weight * reuse) / (1 + depth_weight * depth) * 0.5 ** (age / half_life)

- `reuse`: how many later requests went through the node (SGLang's `hit_count`,
  counted when a request's KV is inserted along the path, minus the first);
- `depth`: branch points above the node (ancestors with more than one child,
  the root excluded): deeper, more speculative spans go first, as RKSC's
  importance / (depth + 1);
- `age`: seconds since a request last read or wrote the node;
- a mark holds until a later request reads the node (then it is an ordinary
  node again): programs mark branches rejected or finished (see `marks.py`).

Attention mass, RKSC's other importance signal, is not used: no attention
backend SGLang runs on a CPU exposes it without an extra pass.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from sglang.srt.mem_cache.evict_policy import EvictionStrategy

from sglang_rksc.rsbcm.marks import node_mark
from sglang_rksc.wire import BACKEND_NAME, EVICTION_POLICY

POLICY_NAME = EVICTION_POLICY


def reasoning_depth(node: Any) -> int:
    """Branch points above `node`: its proper ancestors, root excluded, with more than one child."""
    depth, parent = 0, node.parent
    while parent is not None and parent.parent is not None:
        depth += len(parent.children) > 1
        parent = parent.parent
    return depth


class RsbcmStrategy(EvictionStrategy):
    """Reasoning-structure priority for SGLang's eviction heap (the formula is in the module doc).

    Settings come from `--radix-eviction-policy-config` as keyword arguments."""

    SETTINGS = ("reuse_weight", "depth_weight", "half_life")

    def __init__(self, **settings: Any) -> None:
        unknown = set(settings) - set(self.SETTINGS)
        if unknown:
            raise ValueError(
                f"--radix-eviction-policy-config: {POLICY_NAME} has no setting {', '.join(sorted(unknown))} "
                f"(it takes {', '.join(self.SETTINGS)})"
            )
        self.reuse_weight = _number(settings, "reuse_weight", 1.0, minimum=0.0)
        self.depth_weight = _number(settings, "depth_weight", 1.0, minimum=0.0)
        # Seconds; CPU runs of the programs take minutes, a GPU's far less (see README).
        self.half_life = _number(settings, "half_life", 30.0, minimum=1e-9)

    def value(self, node: Any, now: float) -> float:
        reuse = max(node.hit_count - 1, 0)
        age = max(now - node.last_access_time, 0.0)
        importance = 1.0 + self.reuse_weight * reuse
        return importance / (1.0 + self.depth_weight * reasoning_depth(node)) * 0.5 ** (age / self.half_life)

    def get_priority(self, node: Any) -> tuple[int, float, float]:
        return node_mark(node), self.value(node, time.monotonic()), node.last_access_time


def _number(settings: dict[str, Any], name: str, default: float, *, minimum: float) -> float:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ValueError(
            f"--radix-eviction-policy-config: {POLICY_NAME} {name} must be a number >= {minimum}, got {value!r}"
        )
    return float(value)


def check_policy_flags(policy: str | None, config_json: str | None, backend: str | None) -> None:
    """Launcher-side check of `--radix-eviction-policy rsbcm` and its config; ValueError if bad."""
    if policy is None or policy.lower() != POLICY_NAME:
        return
    if backend != BACKEND_NAME:
        raise ValueError(f"--radix-eviction-policy {POLICY_NAME} needs --radix-cache-backend {BACKEND_NAME}")
    settings: Any = {}
    if config_json:
        try:
            settings = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--radix-eviction-policy-config is not JSON: {exc}") from None
        if not isinstance(settings, dict):
            raise ValueError("--radix-eviction-policy-config must be a JSON object")
    RsbcmStrategy(**settings)
