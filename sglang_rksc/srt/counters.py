"""Forward-pass counters of the scheduler process, reported through `/server_info`.

SGLang's Prometheus metrics count requests and tokens, not forward passes;
the benchmark also needs decode steps and prefill tokens actually computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ForwardCounters:
    prefill_batches: int = 0
    prefill_tokens: int = 0  # prompt tokens computed (not served from the cache)
    decode_steps: int = 0
    decode_rows: int = 0  # requests summed over decode steps: rows / steps = mean decode batch

    def record(self, batch: Any) -> None:
        mode = batch.forward_mode
        if mode.is_decode():
            self.decode_steps += 1
            self.decode_rows += batch.batch_size()
        elif mode.is_extend():
            self.prefill_batches += 1
            self.prefill_tokens += int(batch.extend_num_tokens or 0)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# One scheduler per process: the counters of this process's scheduler.
COUNTERS = ForwardCounters()


def count_batch(scheduler: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
    """BEFORE hook on `Scheduler.run_batch`."""
    COUNTERS.record(batch)
