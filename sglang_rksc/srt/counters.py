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
        counters.decode_steps += 1
        counters.decode_rows += batch.batch_size()
        counters.decode_seconds += seconds
    elif mode.is_extend():
        counters.prefill_batches += 1
        counters.prefill_tokens += int(batch.extend_num_tokens or 0)
        counters.prefill_seconds += seconds


def record_capture(decode: bool, seconds: float) -> None:
    if decode:
        COUNTERS.capture_decode_seconds += seconds
    else:
        COUNTERS.capture_prefill_seconds += seconds


def time_batch(original: Any, scheduler: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `Scheduler.run_batch`."""
    started = time.perf_counter()
    result = original(scheduler, batch, *args, **kwargs)
    record_batch(COUNTERS, batch, time.perf_counter() - started)
    return result
