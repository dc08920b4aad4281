"""Forward-pass counters of the scheduler process, reported through `/server_info` (`wire.ForwardCounters`).

SGLang's Prometheus metrics count requests and tokens, not forward passes;
the benchmark also needs decode steps, prefill tokens actually computed, and
how long both took (with the part spent capturing hidden states for ASKS).
"""

from __future__ import annotations

import time
from typing import Any

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


def record_memory(counters: ForwardCounters, scheduler: Any) -> None:
    """KV held by running requests and locked paths (the pool minus what is free or evictable), and the
    requests waiting for admission, after a forward."""
    try:
        total = int(scheduler.max_total_num_tokens)
        free = int(scheduler.token_to_kv_pool_allocator.available_size())
        evictable = int(scheduler.tree_cache.evictable_size())
        waiting = len(scheduler.waiting_queue)
        running = len(getattr(scheduler.running_batch, "reqs", None) or [])
        in_use_bytes = max(0, total - free - evictable) * _bytes_per_token(scheduler) + _window_bytes_in_use(scheduler)
    except (AttributeError, TypeError):  # a scheduler shape we do not know: no sample
        return
    in_use = max(0, total - free - evictable)
    counters.forwards_sampled += 1
    counters.kv_in_use_sum += in_use
    counters.kv_in_use_max = max(counters.kv_in_use_max, in_use)
    counters.kv_bytes_in_use_sum += in_use_bytes
    counters.kv_bytes_in_use_max = max(counters.kv_bytes_in_use_max, in_use_bytes)
    counters.running_sum += running
    counters.running_max = max(counters.running_max, running)
    counters.waiting_sum += waiting
    counters.waiting_max = max(counters.waiting_max, waiting)


def _bytes_per_token(scheduler: Any) -> int:
    """KV bytes of one token slot: every layer's K and V heads (only the full heads under head compression)."""
    cached = getattr(scheduler, "rksc_bytes_per_token", None)
    if cached is None:
        pool = scheduler.token_to_kv_pool_allocator.get_kvcache()
        describe = getattr(pool, "describe", None)
        if describe is not None:
            cached = int(describe()["bytes_per_token"])
        else:
            k, v = pool.get_kv_size_bytes()
            cached = int((k + v) // (pool.size + pool.page_size))
        scheduler.rksc_bytes_per_token = cached
    return cached


def _window_bytes_in_use(scheduler: Any) -> int:
    """Bytes of the compressed heads' window slots taken (those the tree holds included); 0 without head
    compression."""
    pool = scheduler.token_to_kv_pool_allocator.get_kvcache()
    used = getattr(pool, "used_window_slots", None)
    if used is None:
        return 0
    per_slot = getattr(scheduler, "rksc_bytes_per_window_slot", None)
    if per_slot is None:
        per_slot = scheduler.rksc_bytes_per_window_slot = int(pool.describe()["bytes_per_window_slot"])
    return used * per_slot


def time_batch(original: Any, scheduler: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `Scheduler.run_batch`."""
    started = time.perf_counter()
    result = original(scheduler, batch, *args, **kwargs)
    record_batch(COUNTERS, batch, time.perf_counter() - started)
    record_memory(COUNTERS, scheduler)
    return result
