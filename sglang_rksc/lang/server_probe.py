"""What the server behind a frontend endpoint runs, asked through `/server_info`.

An answer is kept for a few seconds (`TTL_S`): a program asks before every
verification and mark, and a server does not change its flags while it runs;
after that it is asked again, so a server restarted on the same URL with other
flags is read anew. A failed question is never kept: the next call asks again.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sglang_rksc.wire import rksc_state

TTL_S = 5.0


class ServerProbe:
    """The sglang-rksc state a server reports (None: no plugin, or no answer)."""

    _known: dict[str, tuple[float, dict[str, Any] | None]] = {}  # url -> (when asked, state)
    _lock = threading.Lock()
    ttl_s = TTL_S
    clock = staticmethod(time.monotonic)

    @classmethod
    def rksc_state(cls, endpoint: Any) -> dict[str, Any] | None:
        url = endpoint.base_url
        with cls._lock:
            known = cls._known.get(url)
            if known is not None and cls.clock() - known[0] < cls.ttl_s:
                return known[1]
        state, ok = cls._ask(endpoint)
        with cls._lock:
            if ok:
                cls._known[url] = (cls.clock(), state)
            else:
                cls._known.pop(url, None)
        return state

    @staticmethod
    def _ask(endpoint: Any) -> tuple[dict[str, Any] | None, bool]:
        """(state, whether the server answered). Behind SGLang's router, which does not forward `/server_info`,
        a replica is asked (`lang.router`; the replicas of one router are launched alike)."""
        from sglang_rksc.lang.router import worker_urls

        try:
            info = _server_info(endpoint.base_url, endpoint.api_key)
            if info is None:
                replicas = worker_urls(endpoint)
                info = _server_info(replicas[0], endpoint.api_key) if replicas else None
            return (None, False) if info is None else (rksc_state(info), True)
        except Exception:
            return None, False

    @classmethod
    def has_plugin(cls, endpoint: Any) -> bool:
        return cls.rksc_state(endpoint) is not None

    @classmethod
    def forget(cls, url: str | None = None) -> None:
        """Drop what is known of one URL, or of all."""
        with cls._lock:
            if url is None:
                cls._known.clear()
            else:
                cls._known.pop(url, None)


def _server_info(base_url: str, api_key: str | None) -> dict[str, Any] | None:
    """`/server_info` of one server (None: it did not answer 200)."""
    from sglang.utils import http_request

    res = http_request(base_url + "/server_info", api_key=api_key)
    return res.json() if res.status_code == 200 else None
