"""Entry point of SGLang's `sglang.srt.plugins` group.

SGLang calls `register()` in the launcher and in every child process (the
scheduler among them) before it builds the tree cache, so the `rksc` backend
is known wherever `--radix-cache-backend rksc` is checked. Keep this module
cheap to import: it is loaded in every SGLang process.
"""

from __future__ import annotations

from typing import Any

PLUGIN_NAME = "rksc"
INTERNAL_STATE_KEY = "rksc"
_INTERNAL_STATE_TARGET = (
    "sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController.get_internal_state"
)
_RUN_BATCH_TARGET = "sglang.srt.managers.scheduler.Scheduler.run_batch"
_hooks_registered = False


def register() -> None:
    """Register the `rksc` radix-cache backend and our hooks (idempotent)."""
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_rksc.cache.radix_cache import BACKEND_NAME, build_tree_cache
    from sglang_rksc.srt.counters import count_batch

    global _hooks_registered
    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, build_tree_cache)
    if not _hooks_registered:
        HookRegistry.register(_INTERNAL_STATE_TARGET, _report_tree_cache, HookType.AFTER)
        HookRegistry.register(_RUN_BATCH_TARGET, count_batch, HookType.BEFORE)
        _hooks_registered = True


def describe_tree_cache(tree_cache: Any) -> dict[str, Any]:
    """What the live tree cache is; the `rksc` backend adds its own summary."""
    describe = getattr(tree_cache, "describe", None)
    if callable(describe):
        return describe()
    return {"backend": None, "impl": type(tree_cache).__name__}


def _report_tree_cache(result: Any, controller: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER hook: add the live tree cache and our counters to `/server_info`'s internal states."""
    from sglang_rksc.srt.counters import COUNTERS

    tree_cache = getattr(controller.scheduler, "tree_cache", None)
    state = describe_tree_cache(tree_cache) if tree_cache is not None else {"backend": None, "impl": None}
    result.internal_state[INTERNAL_STATE_KEY] = {**state, "counters": COUNTERS.as_dict()}
    return result
