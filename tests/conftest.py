"""Shared fixtures: the default model and the real sglang-rksc server on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sglang_rksc.runtime.default_model import prepare_default_model
from sglang_rksc.srt.server_process import LaunchedServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return prepare_default_model()


@pytest.fixture(scope="session")
def rksc_server(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchedServer]:
    """One real server (our launcher, default model, CPU) shared by the end-to-end tests.

    The context manager stops its whole process group, also when a test fails.
    """
    log = tmp_path_factory.mktemp("server") / "rksc-server.log"
    with LaunchedServer(log_path=log) as server:
        yield server
