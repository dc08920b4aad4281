"""Forward-pass counters of the scheduler process, reported through `/server_info`.

SGLang's Prometheus metrics count requests and tokens, not forward passes;
the benchmark also needs decode steps, prefill tokens actually computed, and
how long both took (with the part spent capturing hidden states for ASKS).
Times are host wall times of `Scheduler.run_batch`: meaningful where a batch
runs synchronously, as on the CPU (`--disable-overlap-schedule`, our CPU
default); with the overlap scheduler on a GPU they only time the launch.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ForwardCounters:
    prefill_batches: int = 0
    prefill_tokens: int = 0  # prompt tokens computed (not served from the cache)
    prefill_seconds: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0  # requests summed over decode steps: rows / steps = mean decode batch
    decode_seconds: float = 0.0
    capture_prefill_seconds: float = 0.0  # spent writing hidden states into the slot store
    capture_decode_seconds: float = 0.0

    def record(self, batch: Any, seconds: float) -> None:
        mode = batch.forward_mode
        if mode.is_decode():
            self.decode_steps += 1
            self.decode_rows += batch.batch_size()
            self.decode_seconds += seconds
        elif mode.is_extend():
            self.prefill_batches += 1
            self.prefill_tokens += int(batch.extend_num_tokens or 0)
            self.prefill_seconds += seconds

    def record_capture(self, decode: bool, seconds: float) -> None:
        if decode:
            self.capture_decode_seconds += seconds
        else:
            self.capture_prefill_seconds += seconds

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# One scheduler per process: the counters of this process's scheduler.
COUNTERS = ForwardCounters()


def time_batch(original: Any, scheduler: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `Scheduler.run_batch`."""
    started = time.perf_counter()
    result = original(scheduler, batch, *args, **kwargs)
    COUNTERS.record(batch, time.perf_counter() - started)
    return result
