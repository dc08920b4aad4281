"""ASKS's SGLang hook on responses (`srt.seams` installs it)."""

from __future__ import annotations

from typing import Any

from sglang_rksc.asks.request_edit import CLIENT_PROMPT_LEN


def report_client_prompt_tokens(result: Any, accumulator: Any, *args: Any, req: Any = None, **kwargs: Any) -> Any:
    """AFTER hook: a request whose prompt a semantic fork rewrote reports the prompt it was sent
    (and no more cached tokens than that), as the client's own bookkeeping expects."""
    client_len = getattr(req, CLIENT_PROMPT_LEN, None)
    if client_len is not None and accumulator.rids and accumulator.rids[-1] == req.rid:
        accumulator.prompt_tokens[-1] = client_len
        accumulator.cached_tokens[-1] = min(accumulator.cached_tokens[-1], client_len)
    return result
