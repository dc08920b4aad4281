"""Timing on a GPU for the `gpu_check_*.py` scripts."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch


def timed(fn: Callable[[], object], reps: int = 50, warmup: int = 5) -> float:
    """Median microseconds of `reps` calls (CUDA events), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return sorted(times)[len(times) // 2]


def run_check(
    name: str, checks: dict[str, Callable[[], object]], timings: Callable[[], list[dict]], device: str
) -> dict:
    """Run the correctness checks, then (on a GPU) the timings; print the result and write it to
    $OUT/`name`.json (the device tool brings $OUT back), else to /tmp."""
    started = time.time()
    result: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    for key, check in checks.items():
        result[key] = check()
    print(result, flush=True)
    result["timings"] = timings() if device == "cuda" else []
    result["seconds"] = time.time() - started
    out = Path(os.environ.get("OUT", "/tmp")) / f"{name}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result
