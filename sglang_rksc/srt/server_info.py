"""What `/server_info` and the responses' meta_info say of sglang-rksc (hook functions; `seams` installs them)."""

from __future__ import annotations

from functools import cache
from typing import Any

from sglang_rksc.wire import INTERNAL_STATE_KEY, META_PREFIX, Meta, Section, put_meta


def describe_tree_cache(tree_cache: Any) -> dict[str, Any]:
    """What the live tree cache is; the `rksc` backend adds its own summary."""
    describe = getattr(tree_cache, "describe", None)
    if callable(describe):
        return describe()
    return {"backend": None, "impl": type(tree_cache).__name__}


def report_tree_cache(result: Any, controller: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER hook: add the live tree cache and our counters to `/server_info`'s internal states."""
    from sglang_rksc.audits.hooks import recorder
    from sglang_rksc.drafts.stats import DRAFTS
    from sglang_rksc.srt.batch_failures import STATS as FAILURES
    from sglang_rksc.srt.counters import COUNTERS

    tree_cache = getattr(controller.scheduler, "tree_cache", None)
    state = describe_tree_cache(tree_cache) if tree_cache is not None else {"backend": None, "impl": None}
    if tree_cache is not None and "evictable_tokens" not in state:
        state["evictable_tokens"] = int(tree_cache.evictable_size())
        state["protected_tokens"] = int(tree_cache.protected_size())
    result.internal_state[INTERNAL_STATE_KEY] = {
        **state,
        Section.COUNTERS: COUNTERS.as_dict(),
        Section.FAILURES: FAILURES.as_dict(),
    }
    if DRAFTS.active:
        result.internal_state[INTERNAL_STATE_KEY][Section.DRAFTS] = DRAFTS.as_dict()
    audits = recorder()
    if audits is not None:
        result.internal_state[INTERNAL_STATE_KEY][Section.AUDITS] = audits.stats.as_dict()
    return result


def request_level_info(original: Any, streamer: Any, key: str) -> bool:
    """AROUND hook: our meta_info entries are one value per request."""
    return key.startswith(META_PREFIX) or original(streamer, key)


@cache
def server_identity() -> dict[str, Any]:
    """This server's host and port, as it was launched (read once per process)."""
    from sglang.srt.runtime_context import get_server_args

    args = get_server_args()
    return {"host": str(args.host), "port": int(args.port)}


def name_the_server(result: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER hook on `Req.__init__`: every response names the server that ran it (`Meta.SERVER`), so that a
    client behind a router can tell which replica served which request."""
    put_meta(req, Meta.SERVER, server_identity())
    return result
