"""A cluster as child processes: N replicas of our server, then SGLang's router in front of them.

The router is `sglang-router` as it ships (`python -m sglang_router.launch_router`), with our defaults for
noticing a dead replica within seconds (`ROUTER_DEFAULTS`, each replaced by the same flag given). Replicas are
`LaunchedServer`s on ports of their own; `kill_replica` and `restart_replica` are the fault drill (SIGKILL,
then the same command on the same port, which the router's health checks take back).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from sglang_rksc.runtime.server_process import LaunchedServer, ServerStartError, free_port

ROUTER_MODULE = "sglang_router.launch_router"
POLICIES = ("cache_aware", "round_robin", "random", "power_of_two", "manual")
# The router's own defaults take minutes to give up on a dead replica (a health check a minute, three
# failures); a program waiting on its branches should hear within seconds. A dead replica refuses the
# connection at once; a busy one (a CPU replica under load) can take seconds to answer: a long timeout.
ROUTER_DEFAULTS: dict[str, str] = {
    "--health-check-interval-secs": "2",
    "--health-check-timeout-secs": "30",
    "--health-failure-threshold": "2",
    "--health-success-threshold": "1",
    "--cb-timeout-duration-secs": "5",
    "--shutdown-grace-period-secs": "10",  # not 180: a stopped cluster waits on no request that long
    "--log-level": "warn",
    # the manual policy (programs' routing keys, `lang.router`): a new program to the replica with fewest
    "--assignment-mode": "min_group",
}


def gpu_count() -> int:
    """GPUs `nvidia-smi` lists here (0 on a machine without one)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listed.splitlines())


def router_command_args(
    worker_urls: Sequence[str], policy: str, router_args: Sequence[str] = (), prometheus_port: int | None = None
) -> list[str]:
    """The router's flags (without --host/--port): the replicas, the policy, our defaults unless given."""
    given = {a.split("=", 1)[0] for a in router_args if a.startswith("--")}
    args = ["--worker-urls", *worker_urls, "--policy", policy]
    for flag, value in ROUTER_DEFAULTS.items():
        if flag not in given:
            args += [flag, value]
    if "--prometheus-port" not in given:
        args += ["--prometheus-port", str(prometheus_port or free_port())]  # the default, 29000, is shared
    return args + list(router_args)


class LaunchedRouter(LaunchedServer):
    """SGLang's router in front of `worker_urls`, as a child process; started once it routes to all of them
    (its `/health` answers before it has registered and checked them: a request sent then finds none)."""

    def __init__(self, worker_urls: Sequence[str], policy: str, router_args: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(router_command_args(worker_urls, policy, router_args), module=ROUTER_MODULE, **kwargs)
        self.worker_urls = list(worker_urls)

    def start(self) -> LaunchedRouter:
        super().start()
        try:
            self.wait_until_routed(self.worker_urls)
        except BaseException:
            self.stop()
            raise
        return self

    def routed(self) -> dict[str, bool]:
        """The replicas the router lists, and whether it routes to each (healthy)."""
        import requests

        listed = requests.get(self.url + "/workers", timeout=30).json().get("workers") or []
        return {w["url"].rstrip("/"): bool(w.get("is_healthy")) for w in listed}

    def wait_until_routed(self, urls: Sequence[str], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            routed = self.routed()
            if all(routed.get(url) for url in urls):
                return
            time.sleep(0.5)
        raise ServerStartError(f"the router did not route to {', '.join(urls)} within {timeout_s:.0f} s")


def replica_env(base: Mapping[str, str], i: int, replicas: int, gpus: int) -> dict[str, str]:
    """Replica i's environment: on a GPU host, GPU i modulo their count; on a CPU, its share of the cores
    (replicas that each start a thread per core thrash: round-robin ran 17x slower than one busy replica)."""
    env = dict(base)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // replicas))
    return env


class LaunchedCluster:
    """`replicas` sglang-rksc servers and SGLang's router; a context manager. Each replica gets its GPU or its
    share of the CPU cores (`replica_env`)."""

    def __init__(
        self,
        replicas: int = 2,
        *,
        policy: str = "cache_aware",
        server_args: Sequence[str] = (),
        router_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        gpus: int | None = None,
        startup_timeout_s: float = 600.0,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"a cluster needs at least 1 replica, got {replicas}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="sglang-rksc-cluster-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        base_env = dict(os.environ if env is None else env)
        gpus = gpu_count() if gpus is None else gpus
        self.replicas = [
            LaunchedServer(
                server_args,
                host=host,
                log_path=self.log_dir / f"replica-{i}.log",
                startup_timeout_s=startup_timeout_s,
                env=replica_env(base_env, i, replicas, gpus),
            )
            for i in range(replicas)
        ]
        self.router = LaunchedRouter(
            [r.url for r in self.replicas],
            policy,
            router_args,
            host=host,
            port=port,
            log_path=self.log_dir / "router.log",
            startup_timeout_s=startup_timeout_s,
            env=base_env,
        )

    @property
    def url(self) -> str:
        """The router's URL: where programs and benchmarks send their requests."""
        return self.router.url

    @property
    def replica_urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def start(self) -> LaunchedCluster:
        try:
            with ThreadPoolExecutor(len(self.replicas)) as pool:  # replicas load at once
                list(pool.map(LaunchedServer.start, self.replicas))
            self.router.start()
        except BaseException:
            self.stop()
            raise
        return self

    def kill_replica(self, i: int) -> None:
        """SIGKILL replica i's whole process group, as a crash would: nothing is flushed or said."""
        proc = self.replicas[i].proc
        assert proc is not None, f"replica {i} is not running"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.replicas[i].proc = None

    def restart_replica(self, i: int) -> None:
        """Start replica i again on its port; the router's health checks take it back."""
        old = self.replicas[i]
        old.stop()
        log = old.log_path.with_name(f"{old.log_path.stem}-restarted.log")
        self.replicas[i] = LaunchedServer(
            old.server_args,
            host=old.host,
            port=old.port,
            log_path=log,
            startup_timeout_s=old.startup_timeout_s,
            env=old.env,
        )
        self.replicas[i].start()
        self.router.wait_until_routed([self.replicas[i].url])

    def stop(self) -> None:
        self.router.stop()
        for replica in self.replicas:
            replica.stop()

    def __enter__(self) -> LaunchedCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
