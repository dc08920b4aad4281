"""Defence in depth: a forward that raises aborts its batch's requests instead of the server.

In SGLang 0.5.23 an exception in `Scheduler.run_batch` ends the scheduler's event
loop; the scheduler then sends SIGQUIT to the server and every client loses its
work. SGLang does have a safe way to end one request whose forward output must not
be used: finish it with `FINISH_ABORT` and release its KV without inserting it into
the tree (`release_kv_cache(..., checkpoint=False)`, what it does for a failed KV
load). So, where the forward runs synchronously and on one rank:

- AROUND `Scheduler.run_batch`: an exception is logged with its traceback and
  turned into a `FailedBatch` result;
- AROUND `Scheduler.process_batch_result`: for a `FailedBatch`, every request of
  the batch is finished with an abort (HTTP 500, the error named), its KV slots are
  freed exactly once, its prefix lock released, and the client told; the tree
  keeps only what earlier, complete forwards inserted.

A batch fails as a whole: every request in it is aborted, not only the one that
caused the failure (one forward computes them all). Not contained, and still fatal:
the overlap scheduler (SGLang's default on GPUs: the forward is in flight when the
next batch is built), speculative decoding, tensor/pipeline parallelism (the other
ranks would wait forever in a collective), and CUDA device-side faults, which leave
the CUDA context unusable. The request checks at the door are the protection there.

For tests, `SGLANG_RKSC_INJECT_FAULT=<rid prefix>:prefill|decode[,...]` makes the
model's logits processor raise, after all layers ran, in a batch of that mode
holding a request whose rid starts with the prefix.
"""

from __future__ import annotations

import logging
import os
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from sglang_rksc.drafts import ALGORITHM_NAME as DRAFTS_ALGORITHM
from sglang_rksc.wire import FailureStats

logger = logging.getLogger(__name__)

FAULT_ENV = "SGLANG_RKSC_INJECT_FAULT"
FAULT_MODES = ("prefill", "decode")


# One scheduler per process.
STATS = FailureStats()


@dataclass(frozen=True)
class FailedBatch:
    """What `run_batch` returns instead of raising; `process_batch_result` aborts the batch."""

    error: str


def why_not_contained(scheduler: Any, batch: Any) -> str | None:
    """Why a failure of this batch cannot be contained, or None."""
    from sglang.srt.runtime_context import get_parallel

    if scheduler.enable_overlap:
        return "overlap scheduler"
    if not scheduler.is_generation:
        return "embedding model"
    if get_parallel().tp_size > 1 or get_parallel().pp_size > 1:
        return "tensor or pipeline parallelism"
    if not batch.spec_algorithm.is_none() and getattr(batch.spec_algorithm, "name", None) != DRAFTS_ALGORITHM:
        return "speculative decoding"  # ours runs synchronously and restores the batch when its step fails
    mode = batch.forward_mode
    if not (mode.is_decode() or mode.is_extend()) or batch.is_dllm():
        return f"forward mode {mode.name}"
    if scheduler.disaggregation_mode.value != "null":
        return "prefill/decode disaggregation"
    if str(batch.device) != "cpu":
        return f"device {batch.device} (a device-side fault can leave it unusable)"
    return None


def run_batch_contained(original: Any, scheduler: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `Scheduler.run_batch`."""
    _CURRENT[0] = batch
    try:
        return original(scheduler, batch, *args, **kwargs)
    except Exception as exc:
        reason = why_not_contained(scheduler, batch)
        if reason is not None:
            logger.error("sglang-rksc: the forward failed and cannot be contained here (%s)", reason)
            raise
        error = f"{type(exc).__name__}: {exc}"
        logger.error(
            "sglang-rksc: the forward of a %s batch of %d request(s) failed; aborting them, the server keeps "
            "serving.\n%s",
            batch.forward_mode.name,
            len(batch.reqs),
            traceback.format_exc(),
        )
        return FailedBatch(error)
    finally:
        _CURRENT[0] = None


def process_batch_result_contained(original: Any, scheduler: Any, batch: Any, result: Any, *args: Any, **kw: Any):
    """AROUND hook on `Scheduler.process_batch_result`."""
    if not isinstance(result, FailedBatch):
        return original(scheduler, batch, result, *args, **kw)
    abort_failed_batch(scheduler, batch, result.error)
    return None


def abort_failed_batch(scheduler: Any, batch: Any, error: str) -> None:
    """Finish every live request of a batch whose forward failed, free its KV, tell its client."""
    from sglang.srt.managers.schedule_batch import FINISH_ABORT
    from sglang.srt.mem_cache.common import release_kv_cache

    message = f"the server failed while computing this request's batch ({error}); the request was aborted"
    allocator = scheduler.token_to_kv_pool_allocator
    allocator.free_group_begin()
    aborted = []
    for req in batch.reqs:
        if req is scheduler.chunked_req:
            scheduler.chunked_req = None  # its next chunk must not be scheduled
        if req.finished() or req.is_retracted:
            continue
        req.to_finish = FINISH_ABORT(message, HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError")
        req.update_finish_state(0)
        if req.kv.holds_kv:
            # The failed step's slots hold no valid KV: they are the request's own, freed with the rest.
            req.kv.kv_committed_len = req.kv.kv_allocated_len
            release_kv_cache(req, scheduler.tree_cache, checkpoint=False)
        aborted.append(req)
    allocator.free_group_end()
    scheduler.output_streamer.stream_output(aborted, False)
    STATS.failed_batches += 1
    STATS.aborted_requests += len(aborted)
    STATS.last_error = error


# The batch `run_batch` is running (one scheduler thread per process): read by the fault injection.
_CURRENT: list[Any] = [None]


def parse_fault(spec: str | None) -> list[tuple[str, str]]:
    """`<rid prefix>:prefill|decode[,...]` -> [(prefix, mode), ...]; ValueError when malformed."""
    faults = []
    for part in (spec or "").split(","):
        if not part:
            continue
        prefix, _, mode = part.rpartition(":")
        if not prefix or mode not in FAULT_MODES:
            raise ValueError(f"{FAULT_ENV} must be <rid prefix>:{'|'.join(FAULT_MODES)}[,...], got {spec!r}")
        faults.append((prefix, mode))
    return faults


def injected_fault(original: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `LogitsProcessor.forward`, registered only when `SGLANG_RKSC_INJECT_FAULT` is set."""
    result = original(*args, **kwargs)
    batch = _CURRENT[0]
    if batch is None:
        return result
    for prefix, mode in parse_fault(os.environ.get(FAULT_ENV)):
        forward_mode = batch.forward_mode
        decode = forward_mode.is_decode() or forward_mode.is_target_verify()  # a drafts step is a decode step
        in_mode = decode if mode == "decode" else forward_mode.is_extend() and not decode
        if in_mode and any(str(req.rid).startswith(prefix) for req in batch.reqs):
            raise RuntimeError(f"fault injected by {FAULT_ENV} in a {mode} batch")
    return result
