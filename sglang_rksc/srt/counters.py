"""Forward-pass counters of the scheduler process, reported through `/server_info` (`wire.ForwardCounters`).

SGLang's Prometheus metrics count requests and tokens, not forward passes;
the benchmark also needs decode steps, prefill tokens actually computed, and
how long both took (with the part spent capturing hidden states for ASKS).
"""

from __future__ import annotations

import time
from typing import Any

from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool
from sglang_rksc.rlkv.windows import windows_held_by
from sglang_rksc.wire import ForwardCounters

# One scheduler per process: the counters of this process's scheduler.
COUNTERS = ForwardCounters()


def record_batch(counters: ForwardCounters, batch: Any, seconds: float) -> None:
    mode = batch.forward_mode
    if mode.is_decode():
        rows = batch.batch_size()
        counters.decode_steps += 1
        counters.decode_rows += rows
        counters.decode_seconds += seconds
        counters.decode_steps_by_batch[rows] = counters.decode_steps_by_batch.get(rows, 0) + 1
    elif mode.is_extend():
        counters.prefill_batches += 1
        counters.prefill_tokens += int(batch.extend_num_tokens or 0)
        counters.prefill_seconds += seconds


def record_capture(decode: bool, seconds: float) -> None:
    if decode:
        COUNTERS.capture_decode_seconds += seconds
    else:
        COUNTERS.capture_prefill_seconds += seconds


def record_memory(counters: ForwardCounters, scheduler: Any, batch: Any = None) -> None:
    """KV held by running requests and locked paths (the pool minus what is free or evictable; in tokens, and
    in bytes with the window slots those requests hold under head compression, not those of evictable cached
    tokens), requests running and waiting for admission, after a forward."""
    try:
        total = int(scheduler.max_total_num_tokens)
        free = int(scheduler.token_to_kv_pool_allocator.available_size())
        evictable = int(scheduler.tree_cache.evictable_size())
        waiting = len(scheduler.waiting_queue)
        running = len(getattr(scheduler.running_batch, "reqs", None) or [])
        pool = scheduler.token_to_kv_pool_allocator.get_kvcache()
        per_token, per_window_slot = _byte_costs(scheduler, pool)
        windows = _windows_in_use(scheduler, pool, batch)
    except (AttributeError, TypeError, KeyError):  # a scheduler shape we do not know: no sample
        return
    in_use = max(0, total - free - evictable)
    in_use_bytes = in_use * per_token + windows * per_window_slot
    counters.forwards_sampled += 1
    counters.kv_in_use_sum += in_use
    counters.kv_in_use_max = max(counters.kv_in_use_max, in_use)
    counters.kv_bytes_in_use_sum += in_use_bytes
    counters.kv_bytes_in_use_max = max(counters.kv_bytes_in_use_max, in_use_bytes)
    counters.running_sum += running
    counters.running_max = max(counters.running_max, running)
    counters.waiting_sum += waiting
    counters.waiting_max = max(counters.waiting_max, waiting)


def _windows_in_use(scheduler: Any, pool: Any, batch: Any) -> int:
    """Window slots of the tokens held by the running requests and the batch just run (0 without head
    compression): the window-slot counterpart of the tokens counted in use."""
    if not isinstance(pool, HeadSplitKVPool):
        return 0
    reqs = {id(r): r for b in (scheduler.running_batch, batch) for r in (getattr(b, "reqs", None) or [])}
    chunked = getattr(scheduler, "chunked_req", None)
    if chunked is not None:
        reqs[id(chunked)] = chunked
    return windows_held_by(pool, scheduler.req_to_token_pool.req_to_token, list(reqs.values()))


def _byte_costs(scheduler: Any, pool: Any) -> tuple[int, int]:
    """(KV bytes of a token slot, of a window slot), read once per scheduler: a head-split pool describes
    both (a token slot holds only the full heads); another pool's token slot holds every head, and it has
    no window slots."""
    costs = getattr(scheduler, "rksc_kv_byte_costs", None)
    if costs is None:
        describe = getattr(pool, "describe", None)
        if describe is not None:
            described = describe()
            costs = (int(described["bytes_per_token"]), int(described["bytes_per_window_slot"]))
        else:
            k, v = pool.get_kv_size_bytes()
            costs = (int((k + v) // (pool.size + pool.page_size)), 0)
        scheduler.rksc_kv_byte_costs = costs
    return costs


def time_batch(original: Any, scheduler: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `Scheduler.run_batch`."""
    started = time.perf_counter()
    result = original(scheduler, batch, *args, **kwargs)
    record_batch(COUNTERS, batch, time.perf_counter() - started)
    record_memory(COUNTERS, scheduler, batch)
    return result
