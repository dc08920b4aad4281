"""Replicas behind SGLang's router (`sglang_rksc.cluster`): a program's requests kept on one replica by
cache-aware routing and scattered by round-robin (so the figure can fail), and bad input refused through the
router as by the server. Last, on the same cluster, a replica killed (SIGKILL) while 4 programs run: every
program ends, with an answer or a stated failure, within a bound; the router stops sending to the dead
replica and the other keeps serving; the replica restarted serves again; the survivor leaks no KV slot
(SGLang's strict idle check)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from sglang_rksc.bench import cluster_stats
from sglang_rksc.cluster.cluster import LaunchedRouter
from sglang_rksc.programs import common, tree_of_thought
from tests.conftest import assert_idle_and_clean, flush_cache

PROBLEMS = 4
TOT_FLAGS = ["--branches", "2", "--max-tokens", "24"]
BOUND_S = 600  # after a replica is killed, every program ends within this, answered or failed


def run_tree_of_thought(url: str, retries: int | None = None, flags: tuple[str, ...] = ()) -> list[dict]:
    """Tree-of-thought on PROBLEMS problems at once through `url`, as a program run does."""
    options = common.program_options(tree_of_thought, [*TOT_FLAGS, *flags])
    options.retries = retries
    problems = tree_of_thought.load_problems(0, PROBLEMS)
    return tree_of_thought.run(common.make_backend(url), problems, options, parallel=PROBLEMS, progress_bar=False)


@pytest.fixture(scope="module")
def routed_cluster(launch_cluster):
    """Two replicas of our server (default model) behind the router, cache-aware."""
    with launch_cluster(2, policy="cache_aware") as cluster:
        yield cluster


def port(name: str) -> int:
    return int(name.rpartition(":")[2])


def main_shares(rows: list[dict]) -> list[float]:
    return [cluster_stats.main_replica(row["servers"])[1] for row in rows]


def test_cache_aware_routing_keeps_each_program_on_one_replica(routed_cluster):
    rows = run_tree_of_thought(routed_cluster.url)
    assert len(rows) == PROBLEMS and not [r for r in rows if "failed" in r]
    replicas = {port(u) for u in routed_cluster.replica_urls}
    for row in rows:
        # every generation call names the replica that ran it, and only replicas of this cluster
        assert sum(row["servers"].values()) == row["tokens"]["requests"] > 0
        assert {port(n) for n in row["servers"]} <= replicas
    assert min(main_shares(rows)) >= 0.9, [r["servers"] for r in rows]


def test_round_robin_scatters_the_same_programs(routed_cluster, tmp_path):
    rr = LaunchedRouter(routed_cluster.replica_urls, "round_robin", log_path=tmp_path / "router-rr.log")
    with rr as router:
        rows = run_tree_of_thought(router.url)
    assert len(rows) == PROBLEMS and not [r for r in rows if "failed" in r]
    shares = main_shares(rows)
    assert sum(shares) / len(shares) < 0.8, [r["servers"] for r in rows]
    assert all(len(r["servers"]) == 2 for r in rows)


def test_routing_keys_keep_programs_whole_and_spread_them(routed_cluster, tmp_path):
    """The manual policy on the programs' routing keys (`lang.router`): each program on one replica, as with
    cache-aware routing, but the programs spread over both replicas (their shared instructions send them all
    to one under cache-aware routing). The verifications are CGEE's: their spec, which the router drops
    from `sampling_params`, reaches the replica (a verification without its verdict fails the program)."""
    keyed = LaunchedRouter(routed_cluster.replica_urls, "manual", log_path=tmp_path / "router-manual.log")
    with keyed as router:
        rows = run_tree_of_thought(router.url, flags=("--verifier", "cgee"))
    assert len(rows) == PROBLEMS and not [r for r in rows if "failed" in r]
    checks = [v for r in rows for v in r["verifications"]]
    assert any(not v["skipped"] for v in checks) and all(v["skipped"] or v["num_layers"] for v in checks), checks
    assert min(main_shares(rows)) >= 0.9, [r["servers"] for r in rows]
    assert len({cluster_stats.main_replica(r["servers"])[0] for r in rows}) == 2, [r["servers"] for r in rows]


# Values the router's own types accept reach our checks: the same status and message as sent directly.
SAME_REFUSAL = [
    {"text": "hi", "sampling_params": {"temperature": -3}},
    {"text": "hi", "sampling_params": {"top_p": 5}},
    {"text": "hi", "sampling_params": {"n": 0}},
    {"text": ""},
    {"input_ids": [999_999_999]},
]
# The router parses sampling_params into its own types first (max_new_tokens is a u32 there): it answers 422.
ROUTER_TYPED = [
    {"text": "hi", "sampling_params": {"max_new_tokens": -1}},
    {"text": "hi", "sampling_params": {"max_new_tokens": "x"}},
]


def test_bad_input_through_the_router_is_refused_as_by_the_server(routed_cluster):
    direct_url = routed_cluster.replica_urls[0]
    for body in SAME_REFUSAL:
        direct = requests.post(direct_url + "/generate", json=body, timeout=120)
        routed = requests.post(routed_cluster.url + "/generate", json=body, timeout=120)
        assert 400 <= direct.status_code < 500, (body, direct.text)
        assert routed.status_code == direct.status_code, (body, routed.text)
        said = direct.json()["error"]["message"].split(" got ")[0]  # the router re-writes -3 as -3.0
        assert routed.json()["error"]["message"].startswith(said), (body, routed.text)
    for body in ROUTER_TYPED:
        routed = requests.post(routed_cluster.url + "/generate", json=body, timeout=120)
        assert routed.status_code in (400, 422) and "max_new_tokens" in routed.text, (body, routed.text)
    served = requests.post(
        routed_cluster.url + "/generate", json={"text": "1 + 1 =", "sampling_params": {"max_new_tokens": 2}}
    )
    assert served.status_code == 200 and served.json()["meta_info"]["rksc_server"][0]["port"]


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


def test_a_replica_killed_mid_run(routed_cluster):
    """Last in this module: it kills one of the shared cluster's replicas (and starts it again)."""
    cluster = routed_cluster
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
