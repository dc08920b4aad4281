"""A replica killed (SIGKILL) while 4 programs run behind the router: every program ends, with an answer or a
stated failure, within a bound; the router stops sending to the dead replica and the other keeps serving; the
replica restarted serves again; the survivor leaks no KV slot (SGLang's strict idle check)."""

from __future__ import annotations

import threading
import time

import requests

from tests.conftest import assert_idle_and_clean, flush_cache
from tests.test_cluster_e2e import PROBLEMS, port, run_tree_of_thought

BOUND_S = 600  # every program ends within this, answered or failed


def replicas_seen(router_url: str) -> dict[str, dict]:
    listed = requests.get(router_url + "/workers", timeout=30).json()["workers"]
    return {w["url"].rstrip("/"): w for w in listed}


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


def served_by(router_url: str, text: str) -> int:
    reply = requests.post(
        router_url + "/generate", json={"text": text, "sampling_params": {"max_new_tokens": 2}}, timeout=120
    )
    assert reply.status_code == 200, reply.text
    return int(reply.json()["meta_info"]["rksc_server"][0]["port"])


def test_a_replica_killed_mid_run(launch_cluster):
    with launch_cluster(2, policy="cache_aware") as cluster:
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                outcome["rows"] = run_tree_of_thought(cluster.url, retries=2)
            except Exception as exc:  # noqa: BLE001 - a raise is a finding, reported below
                outcome["error"] = exc

        runner = threading.Thread(target=run, daemon=True)
        started = time.monotonic()
        runner.start()
        # kill the replica with the most requests in flight, once there are some
        wait_for(lambda: sum(w["load"] for w in replicas_seen(cluster.url).values()) >= 2, 300, "requests in flight")
        loads = replicas_seen(cluster.url)
        victim = max(range(2), key=lambda i: loads[cluster.replica_urls[i]]["load"])
        survivor_url = cluster.replica_urls[1 - victim]
        cluster.kill_replica(victim)

        runner.join(timeout=BOUND_S)
        assert not runner.is_alive(), f"a program still runs {BOUND_S} s after the kill"
        assert "error" not in outcome, outcome.get("error")
        rows = outcome["rows"]
        assert len(rows) == PROBLEMS
        for row in rows:  # an answer (its calls ran somewhere) or a failure said in words
            assert (row.get("failed") or "").strip() or sum(row["servers"].values()) > 0, row
        print(
            f"programs ended {time.monotonic() - started:.0f} s after the start; failed: "
            f"{[r['index'] for r in rows if 'failed' in r]}"
        )

        victim_url = cluster.replica_urls[victim]
        wait_for(lambda: not replicas_seen(cluster.url)[victim_url]["is_healthy"], 60, "the dead replica unhealthy")
        for i in range(3):  # new prefixes: the router sends them to the survivor only
            assert served_by(cluster.url, f"Question {i}: what is {i} + 7?") == port(survivor_url)

        cluster.restart_replica(victim)
        wait_for(lambda: replicas_seen(cluster.url)[victim_url]["is_healthy"], 120, "the restarted replica healthy")
        # cache-aware routing sends a prefix no replica holds to the one with the least cached: the new one
        ports = {served_by(cluster.url, f"A fresh topic {i}: name a colour.") for i in range(4)}
        assert port(victim_url) in ports

        survivor = cluster.replicas[1 - victim]
        flush_cache(survivor)
        assert_idle_and_clean(survivor)
