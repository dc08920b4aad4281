"""Every place sglang-rksc touches SGLang, in one table, checked at start.

Each row is one seam: the SGLang target (a dotted path), how we attach to it, the feature that owns it, its
order among our hooks on the same target (0 is innermost, next to SGLang's own function; a higher order
wraps it), when it is installed, and our function (`module:attribute`). Features export their hook
functions; only `install` attaches them. `check` runs first, in every process the plugin is loaded in and in
our launcher: the installed SGLang must be the pinned release and every target and hook must resolve, or
start fails with one line naming what moved.

Kinds: `around` and `after` go through SGLang's hook registry; `radix backend`, `attention backend` and
`eviction choice` through SGLang's registration functions; `eviction table` is the one write into a private
SGLang table (0.5.23 has no registration function for eviction strategies). `frontend` rows are installed
in a program's process, when it first writes a `verify`, not in the server.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from sglang_rksc.config import RkscConfig

SGLANG_PIN = "0.5.23"  # pyproject.toml pins the same release (tested)

AROUND, AFTER = "around", "after"
RADIX_BACKEND, ATTENTION_BACKEND = "radix backend", "attention backend"
EVICTION_CHOICE, EVICTION_TABLE = "eviction choice", "eviction table"
SPECULATIVE = "speculative algorithm"
FRONTEND = "frontend"  # an AROUND hook in a program's process
KINDS = (AROUND, AFTER, RADIX_BACKEND, ATTENTION_BACKEND, EVICTION_CHOICE, EVICTION_TABLE, SPECULATIVE, FRONTEND)


class SeamError(RuntimeError):
    """A seam that does not resolve on the installed SGLang: one line, naming it."""


def always(config: RkscConfig) -> bool:
    return True


def heads_on(config: RkscConfig) -> bool:
    return config.heads.sparsity > 0


def packets_on(config: RkscConfig) -> bool:
    return config.packets


def packets_on_cuda(config: RkscConfig) -> bool:
    import torch

    return config.packets and torch.cuda.is_available()  # SGLang's Triton backend runs on GPUs only


def drafts_on(config: RkscConfig) -> bool:
    return config.drafts.on


def audits_on(config: RkscConfig) -> bool:
    return config.audit.rate > 0


def fault_injected(config: RkscConfig) -> bool:
    from sglang_rksc.srt.batch_failures import FAULT_ENV, parse_fault

    return bool(parse_fault(os.environ.get(FAULT_ENV)))


@dataclass(frozen=True)
class Seam:
    target: str  # SGLang's dotted path
    kind: str
    feature: str
    hook: str  # ours, "module:attribute"
    order: int = 0  # among our hooks on the same target: 0 innermost
    when: Callable[[RkscConfig], bool] = always

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind


_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_STATE = "sglang.srt.managers.scheduler_components.internal_state.SchedulerInternalStateController"
_STREAM = "sglang.srt.managers.scheduler_components.output_streamer"
_ALLOC = "sglang.srt.mem_cache.allocator.token.TokenToKVPoolAllocator"
_EXIT = "sglang_rksc.exit.layer_exit"

SEAMS: list[Seam] = [
    # the cache itself, and what /server_info and /set_internal_state say of it
    Seam("sglang.srt.mem_cache.registry.register_radix_cache_backend", RADIX_BACKEND, "cache",
         "sglang_rksc.srt.backend:build_tree_cache"),
    Seam(f"{_STATE}.get_internal_state", AFTER, "cache", "sglang_rksc.srt.server_info:report_tree_cache"),
    Seam(f"{_STREAM}.SchedulerOutputStreamer.is_request_level_customized_info_key", AROUND, "cache",
         "sglang_rksc.srt.server_info:request_level_info"),
    Seam("sglang.srt.managers.schedule_batch.Req.__init__", AFTER, "cache",
         "sglang_rksc.srt.server_info:name_the_server", order=1),  # replicas behind a router: which one ran a request
    # requests: checked at the door, their failures contained, their batches timed
    Seam("sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request", AROUND, "requests",
         "sglang_rksc.srt.request_checks:validate_request"),
    Seam("sglang.srt.managers.io_struct.GenerateReqInput.normalize_batch_and_arguments", AROUND, "requests",
         "sglang_rksc.srt.request_checks:normalize_request"),
    Seam("sglang.srt.managers.utils.validate_input_length", AFTER, "requests",
         "sglang_rksc.srt.request_checks:scheduler_prompt_error"),
    Seam(f"{_SCHED}.run_batch", AROUND, "counters", "sglang_rksc.srt.counters:time_batch", order=0),
    Seam(f"{_SCHED}.run_batch", AROUND, "failures", "sglang_rksc.srt.batch_failures:run_batch_contained",
         order=1),  # outermost: a failure anywhere inside is contained
    Seam(f"{_SCHED}.process_batch_result", AROUND, "failures",
         "sglang_rksc.srt.batch_failures:process_batch_result_contained"),
    Seam("sglang.srt.layers.logits_processor.LogitsProcessor.forward", AROUND, "failures",
         "sglang_rksc.srt.batch_failures:injected_fault", order=1, when=fault_injected),  # tests only
    # hidden states for ASKS and span embeddings
    Seam("sglang.srt.layers.logits_processor.LogitsProcessor.forward", AROUND, "states",
         "sglang_rksc.srt.capture:capture_final_hidden_states", order=0),
    Seam(f"{_STREAM}._GenerationStreamAccumulator.accept", AFTER, "asks",
         "sglang_rksc.asks.hooks:report_client_prompt_tokens"),
    # RSBCM
    Seam("sglang.srt.arg_groups.choices.add_radix_eviction_policy_choices", EVICTION_CHOICE, "rsbcm",
         "sglang_rksc.rsbcm.eviction:POLICY_NAME"),
    Seam("sglang.srt.mem_cache.utils._EVICTION_POLICY_FACTORIES", EVICTION_TABLE, "rsbcm",
         "sglang_rksc.rsbcm.eviction:RsbcmStrategy"),
    Seam(f"{_STATE}.set_internal_state", AROUND, "rsbcm", "sglang_rksc.rsbcm.hooks:mark_branches"),
    # decode-side reuse
    Seam(f"{_SCHED}._add_request_to_queue", AROUND, "reuse", "sglang_rksc.reuse.hooks:add_request_to_queue",
         order=0),
    Seam(f"{_SCHED}.process_input_requests", AFTER, "reuse", "sglang_rksc.reuse.hooks:serve_followers"),
    # CGEE
    Seam("sglang.srt.managers.schedule_batch.Req.__init__", AFTER, "cgee", f"{_EXIT}:mark_request"),
    Seam("sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new", AROUND, "cgee",
         f"{_EXIT}:attach_rows", order=0),
    Seam("sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req", AROUND, "cgee",
         f"{_EXIT}:isolate_verifications", order=0),
    Seam("sglang.srt.model_executor.runner.prefill_cuda_graph_runner.PrefillCudaGraphRunner.can_run_graph", AROUND,
         "cgee", f"{_EXIT}:keep_out_of_prefill_graph"),
    Seam("sglang.srt.models.llama.LlamaForCausalLM.forward", AROUND, "cgee", f"{_EXIT}:forward_with_exit"),
    Seam("sglang.srt.models.qwen2.Qwen2ForCausalLM.forward", AROUND, "cgee", f"{_EXIT}:forward_with_exit"),
    Seam("sglang.lang.backend.runtime_endpoint.RuntimeEndpoint.select", FRONTEND, "cgee",
         "sglang_rksc.lang.verify:select_with_verify"),
    # the frontend's executors: ended without the thread lock that can hang a program's process
    Seam("sglang.lang.interpreter.StreamExecutor.end", FRONTEND, "executors",
         "sglang_rksc.lang.executors:end_without_joining"),
    # behind SGLang's router: a batched /generate as one request per prompt (the router takes no batch)
    Seam("sglang.lang.backend.runtime_endpoint.RuntimeEndpoint._generate_http_request", FRONTEND, "router",
         "sglang_rksc.lang.router:generate_one_by_one"),
    # ... and each request names its program (the router's sticky routing key)
    Seam("sglang.lang.interpreter.StreamExecutor._thread_worker_func", FRONTEND, "router",
         "sglang_rksc.lang.router:run_with_program_key"),
    Seam("sglang.lang.backend.runtime_endpoint.http_request", FRONTEND, "router",
         "sglang_rksc.lang.router:send_program_key"),
    # RLKV head compression
    Seam("sglang.srt.platforms.interface.SRTPlatform.get_kv_pool_cls", AROUND, "heads",
         "sglang_rksc.rlkv.hooks:pool_class", when=heads_on),
    Seam("sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._apply_token_constraints", AROUND,
         "heads", "sglang_rksc.rlkv.hooks:capacity", when=heads_on),
    Seam("sglang.srt.layers.attention.attention_registry.register_attention_backend", ATTENTION_BACKEND,
         "heads", "sglang_rksc.rlkv.hooks:torch_native_backend", when=heads_on),
    Seam("sglang.srt.managers.schedule_batch.alloc_for_extend", AFTER, "heads",
         "sglang_rksc.rlkv.windows:after_alloc_for_extend", when=heads_on),
    Seam("sglang.srt.managers.schedule_batch.alloc_for_decode", AFTER, "heads",
         "sglang_rksc.rlkv.windows:after_alloc_for_decode", when=heads_on),
    Seam(f"{_ALLOC}.free", AROUND, "heads", "sglang_rksc.rlkv.windows:free_with_windows", when=heads_on),
    Seam(f"{_ALLOC}.clear", AFTER, "heads", "sglang_rksc.rlkv.windows:clear_windows", when=heads_on),
    Seam(f"{_ALLOC}.check_decode_capacity", AROUND, "heads", "sglang_rksc.rlkv.windows:decode_fits_windows",
         when=heads_on),
    Seam("sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req", AROUND, "heads",
         "sglang_rksc.rlkv.windows:admit_with_windows", order=1, when=heads_on),
    # KV Packet
    Seam(f"{_SCHED}._add_request_to_queue", AFTER, "packets", "sglang_rksc.packets.hooks:tokenise_packets",
         order=1, when=packets_on),
    Seam("sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_extend", AFTER, "packets",
         "sglang_rksc.packets.hooks:copy_packets", when=packets_on),
    Seam("sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new", AROUND, "packets",
         "sglang_rksc.packets.hooks:computed_positions", order=1, when=packets_on),
    Seam("sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend", AROUND,
         "packets", "sglang_rksc.packets.attention:forward_extend", when=packets_on),
    Seam("sglang.srt.layers.attention.triton_backend.TritonAttnBackend.forward_extend", AROUND, "packets",
         "sglang_rksc.packets.attention:forward_extend", when=packets_on_cuda),
    # drafts: our speculative algorithm, its verify attention on the CPU path
    Seam("sglang.srt.speculative.spec_info.SpeculativeAlgorithm.register", SPECULATIVE, "drafts",
         "sglang_rksc.drafts.algorithm:DraftAlgorithm"),
    Seam("sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend", AROUND,
         "drafts", "sglang_rksc.drafts.attention:forward_extend", order=1, when=drafts_on),
    Seam("sglang.srt.mem_cache.allocation.assign_req_to_token_pool_func", AROUND, "drafts",
         "sglang_rksc.drafts.hooks:assign_slots", when=drafts_on),
    Seam("sglang.srt.mem_cache.memory_pool.MHATokenToKVPool._init_kv_copy_and_warmup", AROUND, "drafts",
         "sglang_rksc.drafts.hooks:skip_kv_copy_warmup", when=drafts_on),
    # audits: the audited rows of a batch, their logits before sampling, the positions they produced
    Seam(f"{_SCHED}.run_batch", AROUND, "audits", "sglang_rksc.audits.hooks:choose_rows", order=2, when=audits_on),
    Seam("sglang.srt.layers.logits_processor.LogitsProcessor.forward", AROUND, "audits",
         "sglang_rksc.audits.hooks:read_logits", order=2, when=audits_on),
    Seam(f"{_SCHED}.process_batch_result", AROUND, "audits", "sglang_rksc.audits.hooks:commit_result", order=1,
         when=audits_on),
]  # fmt: skip


def resolve_hook(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def check(seams: list[Seam] = SEAMS) -> None:
    """The pinned SGLang, every target resolving to what its kind needs and every hook to ours; raise
    SeamError (one line) on the first that does not."""
    try:
        installed = version("sglang")
    except PackageNotFoundError:
        raise SeamError("SGLang is not installed") from None
    if installed != SGLANG_PIN:
        raise SeamError(f"sglang-rksc is built for SGLang {SGLANG_PIN}, but {installed} is installed")
    orders: dict[str, set[int]] = {}
    for seam in seams:
        if seam.order in orders.setdefault(seam.target, set()):
            raise SeamError(f"two hooks on {seam.target} share order {seam.order}")
        orders[seam.target].add(seam.order)
        try:
            target = pkgutil.resolve_name(seam.target)
        except (ImportError, AttributeError, ValueError) as exc:
            raise SeamError(f"SGLang target {seam.target} ({seam.feature}) does not resolve: {exc}") from None
        if seam.kind == EVICTION_TABLE and not isinstance(target, dict):
            raise SeamError(f"SGLang target {seam.target} ({seam.feature}) is no longer a table")
        if seam.kind != EVICTION_TABLE and not callable(target):
            raise SeamError(f"SGLang target {seam.target} ({seam.feature}) is not callable")
        try:
            resolve_hook(seam.hook)
        except (ImportError, AttributeError) as exc:
            raise SeamError(f"hook {seam.hook} for {seam.target} does not resolve: {exc}") from None


def install(config: RkscConfig, seams: list[Seam] = SEAMS) -> list[Seam]:
    """Attach the server's seams this configuration wants, in order on each target; the seams attached.
    SGLang applies registry hooks after every plugin has run (`load_plugins`)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    chosen = sorted((s for s in seams if s.kind != FRONTEND and s.when(config)), key=lambda s: (s.target, s.order))
    for seam in chosen:
        hook = resolve_hook(seam.hook)
        if seam.kind in (AROUND, AFTER):
            HookRegistry.register(seam.target, hook, HookType.AROUND if seam.kind == AROUND else HookType.AFTER)
        else:
            _REGISTER[seam.kind](pkgutil.resolve_name(seam.target), hook)
    return chosen


def install_registrations(
    kinds: tuple[str, ...] = (EVICTION_CHOICE, EVICTION_TABLE), seams: list[Seam] = SEAMS
) -> None:
    """Only the registrations of these kinds (the launcher parses `--radix-eviction-policy rsbcm` before the
    plugin is loaded; unit tests use the policy without a server)."""
    for seam in seams:
        if seam.kind in kinds:
            _REGISTER[seam.kind](pkgutil.resolve_name(seam.target), resolve_hook(seam.hook))


def install_frontend(feature: str, seams: list[Seam] = SEAMS) -> None:
    """Attach one feature's frontend seams in this (a program's) process, and apply them at once."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for seam in seams:
        if seam.kind == FRONTEND and seam.feature == feature:
            HookRegistry.register(seam.target, resolve_hook(seam.hook), HookType.AROUND)
    HookRegistry.apply_hooks()


def _radix_backend(register: Callable[..., Any], factory: Any) -> None:
    from sglang.srt.mem_cache.registry import get_radix_cache_factory

    from sglang_rksc.wire import BACKEND_NAME

    if get_radix_cache_factory(BACKEND_NAME) is None:
        register(BACKEND_NAME, factory)


def _attention_backend(register: Callable[..., Any], make_factory: Any) -> None:
    """`make_factory(original)` is our factory for `torch_native`, given SGLang's own."""
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    register("torch_native")(make_factory(ATTENTION_BACKENDS["torch_native"]))


def _eviction_choice(add_choices: Callable[[list[str]], None], name: str) -> None:
    from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES

    if name not in RADIX_EVICTION_POLICY_CHOICES:
        add_choices([name])


def _eviction_table(table: dict[str, Any], strategy: Any) -> None:
    from sglang_rksc.rsbcm.eviction import POLICY_NAME

    table.setdefault(POLICY_NAME, strategy)


def _speculative(register: Callable[..., Any], spec_class: Any) -> None:
    from sglang_rksc.drafts.hooks import register_algorithm

    register_algorithm(register, spec_class)


_REGISTER: dict[str, Callable[[Any, Any], None]] = {
    RADIX_BACKEND: _radix_backend,
    SPECULATIVE: _speculative,
    ATTENTION_BACKEND: _attention_backend,
    EVICTION_CHOICE: _eviction_choice,
    EVICTION_TABLE: _eviction_table,
}
