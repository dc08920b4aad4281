"""The cluster's pieces without a server: the router's command, batches split for the router, the replicas'
counters and where jobs landed, a failed program's row, the launcher's bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from sglang_rksc.bench import cluster_stats
from sglang_rksc.cluster.cluster import ROUTER_DEFAULTS, LaunchedCluster, replica_env, router_command_args
from sglang_rksc.lang import router
from sglang_rksc.programs import common


def test_router_command_names_replicas_and_policy_and_keeps_given_flags():
    args = router_command_args(["http://a:1", "http://b:2"], "round_robin", ["--health-check-interval-secs", "9"])
    assert args[:5] == ["--worker-urls", "http://a:1", "http://b:2", "--policy", "round_robin"]
    assert args.count("--health-check-interval-secs") == 1 and args[-1] == "9"
    for flag in set(ROUTER_DEFAULTS) - {"--health-check-interval-secs"}:
        assert args[args.index(flag) + 1] == ROUTER_DEFAULTS[flag]
    assert "--prometheus-port" in args  # never the shared default port


def test_replicas_get_a_gpu_each_or_their_share_of_the_cores():
    assert replica_env({}, 3, 4, gpus=2)["CUDA_VISIBLE_DEVICES"] == "1"
    cpu = replica_env({}, 0, 2, gpus=0)
    assert "CUDA_VISIBLE_DEVICES" not in cpu and int(cpu["OMP_NUM_THREADS"]) >= 1
    assert replica_env({"OMP_NUM_THREADS": "7"}, 0, 2, gpus=0)["OMP_NUM_THREADS"] == "7"


def test_a_cluster_refuses_bad_shapes():
    with pytest.raises(ValueError, match="at least 1 replica"):
        LaunchedCluster(0)
    with pytest.raises(ValueError, match="policy must be one of"):
        LaunchedCluster(2, policy="fastest")


def test_a_batch_is_split_one_prompt_each_with_the_shared_fields():
    data = {"text": ["a", "b"], "sampling_params": {"max_new_tokens": 0}, "return_logprob": True}
    bodies = router.split_batch(data)
    assert [b["text"] for b in bodies] == ["a", "b"]
    assert all(b["sampling_params"] == {"max_new_tokens": 0} and b["return_logprob"] for b in bodies)
    bodies[0]["sampling_params"]["max_new_tokens"] = 5  # copies, not shared
    assert bodies[1]["sampling_params"]["max_new_tokens"] == 0
    assert router.batch_size({"input_ids": [[1, 2], [3]]}) == 2
    assert router.batch_size({"input_ids": [1, 2]}) is None and router.batch_size({"text": "a"}) is None


def test_a_batch_goes_whole_to_a_server_and_split_to_a_router(monkeypatch):
    sent = []

    def original(endpoint, s, data):
        sent.append({**data, "key": getattr(router._program, "key", None)})
        return [{"n": i} for i in range(len(data["text"]))] if isinstance(data["text"], list) else {"t": data["text"]}

    endpoint = SimpleNamespace(base_url="http://x", api_key=None)
    monkeypatch.setattr(router.RouterView, "workers", classmethod(lambda cls, url, key=None: None))
    assert router.generate_one_by_one(original, endpoint, None, {"text": ["a", "b"]}) == [{"n": 0}, {"n": 1}]
    monkeypatch.setattr(router.RouterView, "workers", classmethod(lambda cls, url, key=None: ["http://r0"]))
    router._program.key = "program-1"  # the executor's thread: its program's routing key
    try:
        assert router.generate_one_by_one(original, endpoint, None, {"text": ["a", "b"]}) == [{"t": "a"}, {"t": "b"}]
    finally:
        router._program.key = None
    assert [d["key"] for d in sent[1:]] == ["program-1", "program-1"]  # the split requests name the program too
    assert sent[0]["text"] == ["a", "b"] and sorted(d["text"] for d in sent[1:]) == ["a", "b"]


def test_forks_share_their_programs_routing_key():
    arguments = {"question": "q"}
    parent, fork = SimpleNamespace(arguments=arguments), SimpleNamespace(arguments=arguments)
    other = SimpleNamespace(arguments={"question": "q"})
    assert router.program_key(parent) == router.program_key(fork) != router.program_key(other)


def _stand_in(is_router: bool) -> ThreadingHTTPServer:
    """An HTTP stand-in for a router (lists a replica at /workers) or a plain server (404 there) whose
    `/generate` names replica port 4242 and records the headers it got."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            workers = [{"url": "http://127.0.0.1:4242", "is_healthy": True}]
            self._reply(200, {"workers": workers}) if is_router else self._reply(404, {})

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            server.keys.append(self.headers.get(router.ROUTING_KEY_HEADER))
            self._reply(200, {"text": "x", "meta_info": {"rksc_server": [{"host": "127.0.0.1", "port": 4242}]}})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.keys = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("is_router", [False, True])
def test_a_programs_requests_carry_its_key_and_only_a_routers_replies_are_remembered(monkeypatch, is_router):
    from sglang.utils import http_request

    server = _stand_in(is_router)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    router.RouterView.forget()
    monkeypatch.setattr(router, "_last_replica", {})
    router._program.key = "program-7"
    try:
        reply = router.send_program_key(http_request, url + "/generate", json={"text": "q"})
    finally:
        router._program.key = None
        server.shutdown()
    assert reply.status_code == 200 and reply.json()["text"] == "x"
    assert server.keys == ["program-7"]
    assert router._last_replica == ({"program-7": 4242} if is_router else {})


def test_replica_counters_travel_flat_and_come_back():
    flat = cluster_stats.combine(
        [{"decode_steps": 3.0, "kv_in_use_max": 10.0}, {"decode_steps": 4.0, "kv_in_use_max": 7.0}]
    )
    assert flat["decode_steps"] == 7.0 and flat["kv_in_use_max"] == 10.0
    assert cluster_stats.replica_counters(flat) == [
        {"decode_steps": 3.0, "kv_in_use_max": 10.0},
        {"decode_steps": 4.0, "kv_in_use_max": 7.0},
    ]
    assert cluster_stats.replica_counters({"decode_steps": 1.0}) == []


def test_placement_counts_each_jobs_main_replica_and_share():
    rows = [
        {"servers": {"h:1": 9, "h:2": 1}},
        {"servers": {"h:2": 5, "h:1": 5}},
        {"servers": {"h:2": 4}},
        {"servers": {}},  # a failed job: no call ran
    ]
    where = cluster_stats.placement([{**r, "replica_ports": [1, 2]} for r in rows], 2)
    assert where["one_replica_share_mean"] == pytest.approx((0.9 + 0.5 + 1.0) / 3)
    assert where["jobs_on_one_replica"] == pytest.approx(2 / 3)
    assert sum(where["jobs_by_main_replica"]) == 3 and where["jobs_by_main_replica"][1] >= 1


def _failing_function(failures: int):
    calls = {"n": 0}

    def run_batch(items, **kwargs):
        calls["n"] += 1
        if calls["n"] <= failures:
            return [SimpleNamespace(ret_value=None, error=lambda: ConnectionError("replica gone"))]
        return [SimpleNamespace(ret_value={"ok": True})]

    return SimpleNamespace(func=SimpleNamespace(__name__="tot"), run_batch=run_batch), calls


def test_a_failed_program_is_retried_then_reported_failed(monkeypatch):
    from sglang.lang.global_config import global_config

    monkeypatch.setattr(global_config, "enable_precache_with_tracing", False)
    endpoint = SimpleNamespace(base_url="http://x")
    function, calls = _failing_function(1)
    assert common.run_batch_rows(function, [{}], endpoint, parallel=1, progress_bar=False, retries=1) == [{"ok": True}]
    assert calls["n"] == 2
    function, calls = _failing_function(5)
    (failure,) = common.run_batch_rows(function, [{}], endpoint, parallel=1, progress_bar=False, retries=2)
    assert calls["n"] == 3 and isinstance(failure, common.ProgramFailure) and failure.tries == 3
    row = common.failed_row(SimpleNamespace(index=4, answer=18), failure)
    assert row["index"] == 4 and row["correct"] is False and "replica gone" in row["failed"]
    assert "after 3 tries" in row["failed"] and row["servers"] == {}


def test_launch_cluster_refuses_a_bad_flag_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "sglang_rksc.launch_cluster", "--policy", "fastest"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "invalid choice: 'fastest'" in done.stderr
