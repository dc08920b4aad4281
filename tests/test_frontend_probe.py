"""The frontend's view of a server: never cached after a failure, renewed after a restart; and SGLang's
frontend is patched only by a program that writes a `verify`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from sglang_rksc.lang.server_probe import ServerProbe


class _FakeSGLang(BaseHTTPRequestHandler):
    """Answers `/server_info` like an SGLang server would, with whatever `answer` holds now."""

    answer: dict = {"status": 503, "body": {}}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps(self.answer["body"]).encode()
        self.send_response(self.answer["status"])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[SimpleNamespace]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FakeSGLang)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    ServerProbe.forget()
    now = [0.0]
    clock, ServerProbe.clock = ServerProbe.clock, staticmethod(lambda: now[0])
    try:
        yield SimpleNamespace(endpoint=SimpleNamespace(base_url=url, api_key=None), now=now)
    finally:
        ServerProbe.clock = clock
        ServerProbe.forget()
        httpd.shutdown()


def _serve(status: int, rksc: dict | None) -> None:
    states = [{"rksc": rksc}] if rksc is not None else [{}]
    _FakeSGLang.answer = {"status": status, "body": {"internal_states": states}}


def test_a_failed_question_is_not_remembered(server):
    _serve(503, None)  # still starting
    assert ServerProbe.rksc_state(server.endpoint) is None
    _serve(200, {"backend": "rksc", "eviction_policy": "lru"})
    assert ServerProbe.has_plugin(server.endpoint)  # asked again at once, not the cached failure


def test_a_restarted_server_is_read_anew(server):
    _serve(200, {"backend": "rksc", "eviction_policy": "lru"})
    assert ServerProbe.rksc_state(server.endpoint)["eviction_policy"] == "lru"
    _serve(200, {"backend": "rksc", "eviction_policy": "rsbcm"})  # restarted with other flags
    assert ServerProbe.rksc_state(server.endpoint)["eviction_policy"] == "lru"  # within the TTL: kept
    server.now[0] += ServerProbe.ttl_s + 0.1
    assert ServerProbe.rksc_state(server.endpoint)["eviction_policy"] == "rsbcm"
    _serve(200, None)  # and again, now a stock server
    server.now[0] += ServerProbe.ttl_s + 0.1
    assert not ServerProbe.has_plugin(server.endpoint)


def test_an_unreachable_server_is_not_remembered(server):
    gone = SimpleNamespace(base_url="http://127.0.0.1:9", api_key=None)  # nothing listens there
    assert ServerProbe.rksc_state(gone) is None
    assert gone.base_url not in ServerProbe._known


PATCH_CHECK = """
import sglang.lang.backend.runtime_endpoint as rt
original = [rt.RuntimeEndpoint.select]  # in a list: SGLang's patching rebinds module-level names
import sglang_rksc, sglang_rksc.lang
from sglang_rksc.lang import mark_branch, merge_branches, Gate
assert rt.RuntimeEndpoint.select is original[0], "importing the frontend primitives patched SGLang"
from sglang_rksc.lang import verify
verify("ok", choices=[" yes", " no"], gate=False)
assert rt.RuntimeEndpoint.select is not original[0], "writing a verify did not install CGEE's select"
print("ok")
"""


def test_sglangs_frontend_is_patched_only_when_a_program_writes_verify():
    result = subprocess.run([sys.executable, "-c", PATCH_CHECK], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
