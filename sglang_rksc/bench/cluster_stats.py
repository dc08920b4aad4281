"""What the replicas behind a router did during a run: each replica's counters (`server_stats`), their sum,
and where each program's requests landed.

The counters of N replicas travel as one flat dict, so that the journal and `server_stats.difference` treat
them as a single server's: the totals under the plain keys (sums; a peak, `*_max`, the largest), and each
replica's own under `replica<i>/<key>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sglang_rksc.bench import server_stats

PREFIX = "replica"


def snapshot(urls: Sequence[str]) -> dict[str, float]:
    """Every replica's counters now, flattened (see the module's docstring)."""
    return combine([server_stats.snapshot(url) for url in urls])


def combine(per_replica: Sequence[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, counters in enumerate(per_replica):
        for key, value in counters.items():
            out[f"{PREFIX}{i}/{key}"] = value
            out[key] = max(out.get(key, value), value) if key.endswith("_max") else out.get(key, 0.0) + value
    return out


def replica_counters(counters: Mapping[str, float]) -> list[dict[str, float]]:
    """Each replica's own counters, back out of a flat dict (empty for a single server's)."""
    replicas: dict[int, dict[str, float]] = {}
    for key, value in counters.items():
        head, sep, rest = key.partition("/")
        if sep and head.startswith(PREFIX) and head[len(PREFIX) :].isdigit():
            replicas.setdefault(int(head[len(PREFIX) :]), {})[rest] = value
    return [replicas[i] for i in sorted(replicas)]


def main_replica(servers: Mapping[str, int]) -> tuple[str | None, float | None]:
    """The server that ran most of a job's requests ("host:port"), and the share it ran (None: none known)."""
    total = sum(servers.values())
    if not total:
        return None, None
    name = max(servers, key=lambda s: servers[s])
    return name, servers[name] / total


def placement(rows: Sequence[Mapping[str, Any]], replicas: int) -> dict[str, Any]:
    """Where the jobs' requests landed: per job, the share its main replica ran; the mean share, the jobs
    kept whole on one replica (at least 90% of their requests), and the jobs each replica mostly served. A
    row names its cluster's replica ports in order (`replica_ports`: a resumed run's replicas took new ones)."""
    shares, by_replica = [], [0] * replicas
    for row in rows:
        name, share = main_replica(row.get("servers") or {})
        if name is None:
            continue
        shares.append(share)
        ports = row.get("replica_ports") or []
        port = int(name.rpartition(":")[2])
        if port in ports and ports.index(port) < replicas:
            by_replica[ports.index(port)] += 1
    return {
        "one_replica_share_mean": sum(shares) / len(shares) if shares else None,
        "jobs_on_one_replica": sum(s >= 0.9 for s in shares) / len(shares) if shares else None,
        "jobs_by_main_replica": by_replica,
    }
