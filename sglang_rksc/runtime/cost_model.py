"""What the token accounting of a run would cost on a GPU: a projection, not a GPU run.

A cost model is a measured table (`cost_models/h100-7b.json` by default, made by
`../shared/tools/gpu_costmodel.py` on an H100 with Qwen2.5-7B shapes; `--cost-model
FILE` takes another run's output): the time of one decode step by its batch size
and tokens per row, and prefill throughput. A run's projected time is

    sum over decode steps of step_ms(batch, tokens per row)  +  prompt tokens computed / prefill rate

(a plain decode step checks one token per row; a drafts verify step, `--rksc-drafts on`, several: its
counters give the steps by shape, `project_shapes`)

with step times interpolated linearly between measured batch sizes (and tokens per
row), and extrapolated linearly past the largest. The counters come from the run
itself (`wire.ForwardCounters`: every decode step's batch size, prefill tokens).
"""

from __future__ import annotations

import bisect
import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT = "h100-7b.json"


class CostModelError(ValueError):
    """A cost-model file that cannot be used: reported as one line."""


@dataclass(frozen=True)
class CostModel:
    name: str
    source: str
    # tokens per row -> sorted (batch, step ms) points
    steps: Mapping[int, tuple[tuple[int, float], ...]]
    prefill_tokens_per_s: float

    def step_ms(self, batch: int, tokens_per_row: int = 1) -> float:
        """One decode step's time: interpolated in batch size, and in tokens per row between tables."""
        if batch < 1 or tokens_per_row < 1:
            raise ValueError(
                f"a decode step has at least one row and one token per row, got {batch} x {tokens_per_row}"
            )
        widths = sorted(self.steps)
        if tokens_per_row in self.steps:
            return _interpolate(self.steps[tokens_per_row], batch)
        i = bisect.bisect_left(widths, tokens_per_row)
        lo, hi = widths[max(0, min(i - 1, len(widths) - 2))], widths[max(1, min(i, len(widths) - 1))]
        if lo == hi:
            return _interpolate(self.steps[lo], batch) * tokens_per_row / lo
        a, b = _interpolate(self.steps[lo], batch), _interpolate(self.steps[hi], batch)
        return a + (b - a) * (tokens_per_row - lo) / (hi - lo)

    def prefill_ms(self, tokens: float) -> float:
        return 1000.0 * tokens / self.prefill_tokens_per_s

    def project(
        self, decode_steps: Mapping[int, int], prefill_tokens: float, tokens_per_row: int = 1
    ) -> dict[str, float]:
        """Projected seconds of a run from its decode steps by batch size and its prefill tokens computed."""
        return self.project_shapes({(batch, tokens_per_row): n for batch, n in decode_steps.items()}, prefill_tokens)

    def project_shapes(
        self, steps_by_shape: Mapping[tuple[int, int], float], prefill_tokens: float
    ) -> dict[str, float]:
        """Projected seconds of a run from its decode steps by (rows, tokens per row), each costed at its own
        shape (drafts' verify steps check several tokens per row), and its prefill tokens computed."""
        decode_ms = sum(
            count * self.step_ms(int(rows), int(tokens)) for (rows, tokens), count in steps_by_shape.items()
        )
        prefill_ms = self.prefill_ms(prefill_tokens)
        return {
            "projected_s": (decode_ms + prefill_ms) / 1000.0,
            "projected_decode_s": decode_ms / 1000.0,
            "projected_prefill_s": prefill_ms / 1000.0,
        }


def _interpolate(points: tuple[tuple[int, float], ...], batch: int) -> float:
    """Linear between the measured batch sizes around `batch`, and along the last (or first) segment
    outside them; never below the smallest measured step."""
    if len(points) == 1:
        return points[0][1]
    xs = [x for x, _ in points]
    i = min(max(bisect.bisect_left(xs, batch), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return max(y0 + (y1 - y0) * (batch - x0) / (x1 - x0), min(y for _, y in points))


def _positive(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CostModelError(f"{where} must be a positive number, got {value!r:.60}")
    return float(value)


def parse(data: Any, name: str) -> CostModel:
    """A cost model from `gpu_costmodel.py`'s JSON (its `--spec` table's `NxT` keys may sit in `decode_step`)."""
    if not isinstance(data, Mapping):
        raise CostModelError(f"cost model {name}: not a JSON object")
    table = data.get("decode_step")
    if not isinstance(table, Mapping) or not table:
        raise CostModelError(f"cost model {name}: no decode_step table")
    steps: dict[int, list[tuple[int, float]]] = {}
    for key, entry in table.items():
        batch_text, _, width_text = str(key).partition("x")
        try:
            batch, width = int(batch_text), int(width_text or 1)
        except ValueError:
            raise CostModelError(f"cost model {name}: decode_step key {key!r} is not N or NxT") from None
        if batch < 1 or width < 1:
            raise CostModelError(f"cost model {name}: decode_step key {key!r} must be positive")
        ms = entry.get("step_ms") if isinstance(entry, Mapping) else None
        steps.setdefault(width, []).append((batch, _positive(ms, f"cost model {name}: decode_step[{key}].step_ms")))
    if 1 not in steps:
        raise CostModelError(f"cost model {name}: decode_step has no one-token-per-row entries (keys N or Nx1)")
    prefill = data.get("prefill")
    if not isinstance(prefill, Mapping) or not prefill:
        raise CostModelError(f"cost model {name}: no prefill table")
    rates = [
        _positive(
            (v or {}).get("tok_per_s") if isinstance(v, Mapping) else None, f"cost model {name}: prefill[{k}].tok_per_s"
        )
        for k, v in prefill.items()
    ]
    return CostModel(
        name=name,
        source=str(data.get("source") or data.get("device") or name),
        steps={w: tuple(sorted(dict(p).items())) for w, p in steps.items()},
        prefill_tokens_per_s=statistics.median(rates),
    )


def load(path: str | Path | None = None) -> CostModel:
    """The default model (shipped in the package) or the one in `path`; CostModelError if unusable."""
    if path is None:
        text = resources.files("sglang_rksc.runtime.cost_models").joinpath(DEFAULT).read_text()
        return parse(json.loads(text), DEFAULT)
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise CostModelError(f"cost model {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CostModelError(f"cost model {path}: not JSON ({exc})") from None
    return parse(data, str(path))
