"""Entry point of SGLang's `sglang.srt.plugins` group.

SGLang calls `register()` in the launcher and in every child process (the
scheduler among them) before it builds the tree cache, so the `rksc` backend
is known wherever `--radix-cache-backend rksc` is checked. Keep this module
cheap to import: it is loaded in every SGLang process.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sglang_rksc.wire import INTERNAL_STATE_KEY, META_PREFIX, Section

logger = logging.getLogger(__name__)

_HOOKS = {
    "internal_state": (
        "sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController.get_internal_state"
    ),
    "set_internal_state": (
        "sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController.set_internal_state"
    ),
    "run_batch": "sglang.srt.managers.scheduler.Scheduler.run_batch",
    "process_result": "sglang.srt.managers.scheduler.Scheduler.process_batch_result",
    "add_request": "sglang.srt.managers.scheduler.Scheduler._add_request_to_queue",
    "input_requests": "sglang.srt.managers.scheduler.Scheduler.process_input_requests",
    "logits": "sglang.srt.layers.logits_processor.LogitsProcessor.forward",
    "accept_output": ("sglang.srt.managers.scheduler_components.output_streamer._GenerationStreamAccumulator.accept"),
    "request_level_info": (
        "sglang.srt.managers.scheduler_components.output_streamer."
        "SchedulerOutputStreamer.is_request_level_customized_info_key"
    ),
    "req_init": "sglang.srt.managers.schedule_batch.Req.__init__",
    "forward_batch": "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new",
    "admission": "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req",
    "validate": "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request",
    "scheduler_validate": "sglang.srt.managers.utils.validate_input_length",
    "normalize": "sglang.srt.managers.io_struct.GenerateReqInput.normalize_batch_and_arguments",
    "prefill_graph": (
        "sglang.srt.model_executor.runner.prefill_cuda_graph_runner.PrefillCudaGraphRunner.can_run_graph"
    ),
}
# Causal-LM classes whose forward the layer exit wraps (their subclasses inherit it).
EXIT_MODELS = (
    "sglang.srt.models.llama.LlamaForCausalLM.forward",
    "sglang.srt.models.qwen2.Qwen2ForCausalLM.forward",
)
_hooks_registered = False


def register() -> None:
    """Register the `rksc` radix-cache backend and our hooks (idempotent)."""
    from sglang.srt.mem_cache.registry import get_radix_cache_factory, register_radix_cache_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_rksc.cache.capture import capture_final_hidden_states
    from sglang_rksc.cache.eviction import register_policy
    from sglang_rksc.exit import layer_exit
    from sglang_rksc.reuse import hooks as reuse_hooks
    from sglang_rksc.srt import batch_failures, request_checks
    from sglang_rksc.srt.backend import build_tree_cache
    from sglang_rksc.srt.counters import time_batch
    from sglang_rksc.wire import BACKEND_NAME

    global _hooks_registered
    if get_radix_cache_factory(BACKEND_NAME) is None:
        register_radix_cache_backend(BACKEND_NAME, build_tree_cache)
    register_policy()
    if not _hooks_registered:
        HookRegistry.register(_HOOKS["internal_state"], _report_tree_cache, HookType.AFTER)
        HookRegistry.register(_HOOKS["set_internal_state"], _mark_branches, HookType.AROUND)
        HookRegistry.register(_HOOKS["run_batch"], time_batch, HookType.AROUND)
        # Registered after the others on these targets, so it is the outermost wrapper.
        HookRegistry.register(_HOOKS["run_batch"], batch_failures.run_batch_contained, HookType.AROUND)
        HookRegistry.register(_HOOKS["process_result"], batch_failures.process_batch_result_contained, HookType.AROUND)
        HookRegistry.register(_HOOKS["add_request"], reuse_hooks.add_request_to_queue, HookType.AROUND)
        HookRegistry.register(_HOOKS["input_requests"], reuse_hooks.serve_followers, HookType.AFTER)
        HookRegistry.register(_HOOKS["logits"], capture_final_hidden_states, HookType.AROUND)
        HookRegistry.register(_HOOKS["request_level_info"], _request_level_info, HookType.AROUND)
        HookRegistry.register(_HOOKS["accept_output"], _report_client_prompt_tokens, HookType.AFTER)
        HookRegistry.register(_HOOKS["req_init"], layer_exit.mark_request, HookType.AFTER)
        HookRegistry.register(_HOOKS["forward_batch"], layer_exit.attach_rows, HookType.AROUND)
        HookRegistry.register(_HOOKS["admission"], layer_exit.isolate_verifications, HookType.AROUND)
        HookRegistry.register(_HOOKS["validate"], request_checks.validate_request, HookType.AROUND)
        HookRegistry.register(_HOOKS["normalize"], request_checks.normalize_request, HookType.AROUND)
        HookRegistry.register(_HOOKS["scheduler_validate"], request_checks.scheduler_prompt_error, HookType.AFTER)
        if batch_failures.parse_fault(os.environ.get(batch_failures.FAULT_ENV)):
            HookRegistry.register(_HOOKS["logits"], batch_failures.injected_fault, HookType.AROUND)
        HookRegistry.register(_HOOKS["prefill_graph"], layer_exit.keep_out_of_prefill_graph, HookType.AROUND)
        for target in EXIT_MODELS:
            HookRegistry.register(target, layer_exit.forward_with_exit, HookType.AROUND)
        _register_optional_hooks()
        _hooks_registered = True


def _register_optional_hooks() -> None:
    """RLKV head compression's and packets' hooks, only in a server launched with them (the settings travel
    in the env)."""
    from sglang_rksc.config import ENV_VAR, RkscConfig

    if not os.environ.get(ENV_VAR):
        return
    try:
        heads = RkscConfig.from_env().heads
    except ValueError:
        return  # reported where the settings are used (the tree-cache factory), in one line
    if heads.sparsity > 0:
        from sglang_rksc.rlkv import hooks as head_compression

        head_compression.register(heads)
    if RkscConfig.from_env().packets:
        from sglang_rksc.packets import hooks as packets

        packets.register()


def describe_tree_cache(tree_cache: Any) -> dict[str, Any]:
    """What the live tree cache is; the `rksc` backend adds its own summary."""
    describe = getattr(tree_cache, "describe", None)
    if callable(describe):
        return describe()
    return {"backend": None, "impl": type(tree_cache).__name__}


def _report_tree_cache(result: Any, controller: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER hook: add the live tree cache and our counters to `/server_info`'s internal states."""
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
    return result


def _mark_branches(original: Any, controller: Any, recv_req: Any) -> Any:
    """AROUND hook: `/set_internal_state` with `rksc_mark/<mark>/<rid>` keys marks branches for RSBCM
    (see `sglang_rksc.cache.marks`); every other update goes to SGLang."""
    from sglang.srt.managers.io_struct import SetInternalStateReqOutput

    from sglang_rksc.wire import is_mark_request, parse_mark_request

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


def _request_level_info(original: Any, streamer: Any, key: str) -> bool:
    """AROUND hook: our meta_info entries are one value per request."""
    return key.startswith(META_PREFIX) or original(streamer, key)


def _report_client_prompt_tokens(result: Any, accumulator: Any, *args: Any, req: Any = None, **kwargs: Any) -> Any:
    """AFTER hook: a request whose prompt a semantic fork rewrote reports the prompt it was sent
    (and no more cached tokens than that), as the client's own bookkeeping expects."""
    from sglang_rksc.cache.asks.request_edit import CLIENT_PROMPT_LEN

    client_len = getattr(req, CLIENT_PROMPT_LEN, None)
    if client_len is not None and accumulator.rids and accumulator.rids[-1] == req.rid:
        accumulator.prompt_tokens[-1] = client_len
        accumulator.cached_tokens[-1] = min(accumulator.cached_tokens[-1], client_len)
    return result
