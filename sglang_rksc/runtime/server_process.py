"""Run the server as a child process: for programs, benchmarks and tests.

`LaunchedServer` starts `python -m sglang_rksc.launch_server` (or another
launcher module) in its own
process group, waits until `/health` answers, and stops the whole group on
exit, also when the caller fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time."""


class PortTakenError(ServerStartError):
    """Another process bound the server's port between our check and SGLang's bind."""


# What the server logs when its port was taken after our check: SGLang then stays up without serving, and the
# health check would wait out its whole timeout. A port we chose is chosen again instead.
PORT_TAKEN = "address already in use"
PORT_TRIES = 3


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on right now (SGLang also takes a few above it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def exit_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does, through its `with` blocks, so that the servers it
    launched (in sessions of their own, which a signal to this process does not reach) are stopped too.
    For the benchmarks: a killed run leaves no server behind and continues with `--resume`."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


class LaunchedServer:
    """The sglang-rksc server as a child process; a context manager."""

    def __init__(
        self,
        server_args: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 600.0,
        env: dict[str, str] | None = None,
        module: str = "sglang_rksc.launch_server",
    ) -> None:
        self.host = host
        self.own_port = port is None  # ours to choose again if another process takes it first
        self.port = port or free_port(host)
        self.server_args = list(server_args)
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.module = module  # "sglang.launch_server" runs stock SGLang's launcher
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="sglang-rksc-server-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            *self.server_args,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]

    def start(self) -> LaunchedServer:
        assert self.proc is None, "already started"
        for _ in range(PORT_TRIES - 1):
            try:
                return self._start_once()
            except PortTakenError:
                if not self.own_port:
                    raise
                self.proc = None
                self.port = free_port(self.host)
        return self._start_once()  # the last try: a taken port now fails the start

    def _start_once(self) -> LaunchedServer:
        if port_in_use(self.host, self.port):  # else the health check would be answered by that other process
            raise ServerStartError(f"something already listens on {self.host}:{self.port}")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log:
            # Own session: stop() can end the server and all its children at once.
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        read = 0  # bytes of the log already searched for PORT_TAKEN
        while time.monotonic() < deadline:
            code = self.proc.poll()
            read, taken = self._log_says_port_taken(read)
            if taken:
                raise PortTakenError(
                    f"port {self.port} was taken before the server bound it; log {self.log_path}:\n"
                    + _tail(self.log_path)
                )
            if code is not None:
                raise ServerStartError(
                    f"server exited with status {code} before it was ready; log {self.log_path}:\n"
                    + _tail(self.log_path)
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)  # a start is ready about 30 s in; a shorter poll finds it sooner
        raise ServerStartError(
            f"server not healthy after {self.startup_timeout_s:.0f} s; log {self.log_path}:\n" + _tail(self.log_path)
        )

    def _log_says_port_taken(self, start: int) -> tuple[int, bool]:
        """Whether the log, from byte `start` on (less a marker's length, in case one was cut), says the port
        was taken; and where to start next time."""
        begin = max(0, start - len(PORT_TAKEN))
        try:
            with open(self.log_path, "rb") as log:
                log.seek(begin)
                text = log.read()
        except OSError:
            return start, False
        return begin + len(text), PORT_TAKEN in text.decode(errors="replace").lower()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Terminate the server's process group; kill it if it does not go in time."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children left in the group (the scheduler) must not outlive us either.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> LaunchedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
