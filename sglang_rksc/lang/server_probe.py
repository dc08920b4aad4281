"""What the server behind a frontend endpoint runs: asked once per URL through `/server_info`."""

from __future__ import annotations

import threading
from typing import Any

from sglang_rksc.srt.plugin import INTERNAL_STATE_KEY


class ServerProbe:
    """The sglang-rksc state a server reports (None: no plugin, or no answer)."""

    _known: dict[str, dict[str, Any] | None] = {}
    _lock = threading.Lock()

    @classmethod
    def rksc_state(cls, endpoint: Any) -> dict[str, Any] | None:
        with cls._lock:
            if endpoint.base_url not in cls._known:
                from sglang.utils import http_request

                try:
                    res = http_request(endpoint.base_url + "/server_info", api_key=endpoint.api_key)
                    states = res.json().get("internal_states") or [{}]
                    cls._known[endpoint.base_url] = (states[0] or {}).get(INTERNAL_STATE_KEY)
                except Exception:
                    cls._known[endpoint.base_url] = None
            return cls._known[endpoint.base_url]

    @classmethod
    def has_plugin(cls, endpoint: Any) -> bool:
        return cls.rksc_state(endpoint) is not None
