"""`mark_branch`: tell the server a forked branch is rejected or finished (RSBCM evicts it first).

    from sglang_rksc.lang import mark_branch

    forks = s.fork(3)
    forks += sgl.gen("thought", max_tokens=64)
    ...
    mark_branch(forks[i], "rejected")   # after a failed verification, say

The branch is what the state generated itself (a fork's own generations: the
frontend does not copy meta_info into forks), named by the request ids in
its meta_info. The server marks each request's path from its prompt boundary
on, and everything below it; trunks shared with other branches keep their
priority. One `/set_internal_state` call, no forward. Against a server
without the plugin, or one whose cache is not the `rksc` backend, it does
nothing and returns False; so it does when the server's eviction policy is not
`rsbcm` (no other policy reads marks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sglang_rksc.lang.server_probe import ServerProbe
from sglang_rksc.wire import BACKEND_NAME, EVICTION_POLICY, MARKS, mark_request_args

logger = logging.getLogger(__name__)


def branch_rids(state: Any) -> list[str]:
    """The request ids of the generations this state made itself (waits for them to finish)."""
    executor = state.stream_executor
    executor.sync()
    rids = []
    for meta in executor.meta_info.values():
        rid = meta.get("id") if isinstance(meta, dict) else None
        if isinstance(rid, str) and rid:
            rids.append(rid)
    return rids


def mark_branch(states: Any, mark: str) -> bool:
    """Mark one state's branch, or several states' branches (a list or a fork), `rejected` or `finished`.

    Returns True when the server took the mark, False when there was nothing to mark or the
    server does not use marks (no plugin, another cache backend or eviction policy). Raises ValueError on a bad mark."""
    if not isinstance(mark, str) or mark not in MARKS:
        raise ValueError(f"mark must be one of {', '.join(MARKS)}, got {mark!r}")
    if hasattr(states, "states") and not hasattr(states, "stream_executor"):
        states = states.states  # a fork itself (SGLang's ProgramStateGroup)
    group = list(states) if isinstance(states, Iterable) and not hasattr(states, "stream_executor") else [states]
    for state in group:
        if not hasattr(state, "stream_executor"):
            raise ValueError(f"mark_branch takes program states (from a fork), got {type(state).__name__}")
    if not group:
        return False
    endpoint = group[0].stream_executor.backend
    if getattr(endpoint, "base_url", None) is None or not ServerProbe.has_plugin(endpoint):
        return False
    state = ServerProbe.rksc_state(endpoint) or {}
    if state.get("backend") != BACKEND_NAME or state.get("eviction_policy") != EVICTION_POLICY:
        return False
    rids = [rid for state in group for rid in branch_rids(state)]
    if not rids:
        return False
    return _send(endpoint, mark_request_args(rids, mark))


def _send(endpoint: Any, server_args: dict[str, int]) -> bool:
    """One `/set_internal_state` call; behind SGLang's router, which does not forward it, one to each replica
    (a replica that does not hold a marked request ignores it): taken when every replica took it."""
    from sglang_rksc.lang.router import worker_urls

    replicas = worker_urls(endpoint)
    return all(_send_to(url, endpoint.api_key, server_args) for url in replicas or [endpoint.base_url])


def _send_to(url: str, api_key: str | None, server_args: dict[str, int]) -> bool:
    from sglang.utils import http_request

    try:
        res = http_request(url + "/set_internal_state", json={"server_args": server_args}, api_key=api_key)
        updated = res.json()
    except Exception as exc:  # the mark only orders eviction: a lost one costs no answer
        logger.warning("sglang-rksc: could not mark a branch: %s", exc)
        return False
    return bool(updated) and all(updated if isinstance(updated, list) else [updated])
