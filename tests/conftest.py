"""Shared fixtures: the default model and the real sglang-rksc server on this machine."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sglang_rksc.runtime.default_model import prepare_default_model
from sglang_rksc.runtime.server_process import LaunchedServer

REPO = Path(__file__).resolve().parents[1]
# SGLang's idle check then raises (and the server fails loudly) on a leaked, double-freed or
# used-after-free KV slot, instead of only logging it.
STRICT_MEMORY_ENV = {**os.environ, "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE": "1"}
LEAK_MARKERS = ("memory leak detected", "double free", "use-after-free")


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


@pytest.fixture
def sglang_context() -> Iterator[None]:
    """SGLang's process-wide config, published as its own unit tests do (no server runs)."""
    from sglang.test.test_utils import published_topology

    with published_topology():
        yield
