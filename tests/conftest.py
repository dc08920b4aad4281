"""Shared fixtures: the default model and the real sglang-rksc server on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from sglang_rksc.cluster.cluster import LaunchedCluster
from sglang_rksc.runtime.default_model import prepare_default_model
from sglang_rksc.runtime.server_process import LaunchedServer

REPO = Path(__file__).resolve().parents[1]
# SGLang's idle check then raises (and the server fails loudly) on a leaked, double-freed or
# used-after-free KV slot, instead of only logging it.
STRICT_MEMORY_ENV = {**os.environ, "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE": "1"}
LEAK_MARKERS = ("memory leak detected", "double free", "use-after-free")
# The fixtures that start a real server (about 40 s each on a CPU): a test that requests one, directly or
# through another fixture, is marked `server` and stays out of the fast tier (`-m "not server and not slow"`).
SERVER_FIXTURES = frozenset(
    {"rksc_server", "launch_server", "launch_module_server", "server_subprocess", "launch_cluster"}
)


def pytest_configure(config: pytest.Config) -> None:
    # The tests run SGLang programs in this process: their executors get the end that cannot hang it.
    from sglang_rksc.lang import executors

    executors.install()


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by `-m`
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `server` every test whose fixtures (`item.fixturenames`, the whole closure) start a server.

    The one exception, marked by hand: `tests/test_serve.py`'s two runs of the serving benchmark
    (`serve.run_one_config`, `serve.main`) start their servers inside the code under test, in this process,
    where no fixture can hand them one.
    """
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def flush_cache(server: LaunchedServer) -> None:
    """`/flush_cache`, retried: the scheduler refuses it while it is still finishing a batch."""
    import requests

    for _ in range(20):
        if requests.post(server.url + "/flush_cache", timeout=30).status_code == 200:
            return
        time.sleep(0.5)


def assert_idle_and_clean(server: LaunchedServer) -> None:
    """Let SGLang's strict idle pool check run; the server is healthy and logged no leak."""
    import requests

    time.sleep(2)
    assert requests.get(server.url + "/health", timeout=30).status_code == 200
    assert not [m for m in LEAK_MARKERS if m in server.log_text()]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return prepare_default_model()


@pytest.fixture(scope="session")
def rksc_server(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchedServer]:
    """One real server (our launcher, default model, CPU) shared by the end-to-end tests.

    The context manager stops its whole process group, also when a test fails.
    """
    log = tmp_path_factory.mktemp("server") / "rksc-server.log"
    with LaunchedServer(log_path=log, env=STRICT_MEMORY_ENV) as server:
        yield server


class ServerLauncher:
    """Called as `launch(args, module=..., env=..., log_name=...)`, it gives a `LaunchedServer` to use as a
    context manager; `stop_all` stops every server it gave, so none outlives its fixture, whatever the test did."""

    def __init__(self, log_dir: Callable[[str], Path]) -> None:
        self._log_dir = log_dir
        self.started: list[LaunchedServer] = []

    def __call__(
        self,
        args: Sequence[str] = (),
        *,
        module: str = "sglang_rksc.launch_server",
        env: dict[str, str] | None = None,
        log_name: str = "server",
        startup_timeout_s: float = 600.0,
    ) -> LaunchedServer:
        log = self._log_dir(log_name) / f"{log_name}.log"
        if any(server.log_path == log for server in self.started):  # two servers must not share a log
            log = log.with_name(f"{log_name}-{len(self.started)}.log")
        server = LaunchedServer(args, module=module, env=env, log_path=log, startup_timeout_s=startup_timeout_s)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()  # a no-op for a server already stopped


@pytest.fixture
def launch_server(tmp_path: Path) -> Iterator[ServerLauncher]:
    """Servers for one test: `with launch_server(args, env=..., log_name=...) as server:`."""
    launcher = ServerLauncher(lambda _name: tmp_path)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def launch_module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerLauncher]:
    """Servers shared by the tests of one module (through a module fixture of that module)."""
    launcher = ServerLauncher(tmp_path_factory.mktemp)
    yield launcher
    launcher.stop_all()


@pytest.fixture(scope="module")
def launch_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LaunchedCluster]]:
    """Clusters (replicas of our server, strict memory checks on, behind SGLang's router) for the tests of one
    module: `launch(replicas, policy=..., server_args=...)` gives one to use as a context manager; none
    outlives the module."""
    started: list[LaunchedCluster] = []

    def launch(replicas: int = 2, **kwargs: object) -> LaunchedCluster:
        cluster = LaunchedCluster(replicas, log_dir=tmp_path_factory.mktemp("cluster"), env=STRICT_MEMORY_ENV, **kwargs)
        started.append(cluster)
        return cluster

    yield launch
    for cluster in started:
        cluster.stop()


@pytest.fixture
def server_subprocess() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run(module, *args, timeout=...)`: `python -m module args`, output captured as text, for a program
    that starts servers of its own (a benchmark given no `--url`)."""

    def run(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def sglang_context() -> Iterator[None]:
    """SGLang's process-wide config, published as its own unit tests do (no server runs)."""
    from sglang.test.test_utils import published_topology

    with published_topology():
        yield
