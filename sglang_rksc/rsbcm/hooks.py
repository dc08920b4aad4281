"""RSBCM's SGLang hook: branch marks arrive through `/set_internal_state` (`srt.seams` installs it)."""

from __future__ import annotations

import logging
from typing import Any

from sglang_rksc.wire import is_mark_request, parse_mark_request

logger = logging.getLogger(__name__)


def mark_branches(original: Any, controller: Any, recv_req: Any) -> Any:
    """AROUND hook: `/set_internal_state` with `rksc_mark/<mark>/<rid>` keys marks branches for RSBCM
    (see `marks`); every other update goes to SGLang."""
    from sglang.srt.managers.io_struct import SetInternalStateReqOutput

    requested = recv_req.server_args or {}
    if not is_mark_request(requested):
        return original(controller, recv_req)
    tree_cache = getattr(controller.scheduler, "tree_cache", None)
    try:
        rids, mark = parse_mark_request(requested)
        if not callable(getattr(tree_cache, "mark", None)):
            raise ValueError("branch marks need --radix-cache-backend rksc")
    except ValueError as exc:
        logger.warning("sglang-rksc: %s", exc)
        return SetInternalStateReqOutput(updated=False)
    tree_cache.mark(rids, mark)
    return SetInternalStateReqOutput(updated=True)
