"""What a server did during a run: SGLang's Prometheus counters plus our forward counters.

Counters are read before and after a run and subtracted, so warm-up requests
and earlier runs never count.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import requests

from sglang_rksc.wire import Section, rksc_state

# Our names for SGLang's counters (needs --enable-metrics on the server).
PROMETHEUS_COUNTERS = {
    "requests": "sglang:num_requests_total",
    "prompt_tokens": "sglang:prompt_tokens_total",
    "cached_tokens": "sglang:cached_tokens_total",
    "generated_tokens": "sglang:generation_tokens_total",
    "evicted_tokens": "sglang:evicted_tokens_total",
    "retracted_requests": "sglang:num_retracted_requests_total",
}
BY_BATCH = "decode_steps_by_batch/"  # our decode-step histogram, flattened: one key per batch size
# The drafts' counters (`--rksc-drafts on`), flattened the same way: `drafts_steps_by_shape/ROWSxTOKENS`,
# `drafts_drafted/<source>`, `drafts_accepted/<source>`, and the plain totals below.
DRAFTS = "drafts_"
BY_SHAPE = DRAFTS + "steps_by_shape/"
DRAFTED = DRAFTS + "drafted/"
ACCEPTED = DRAFTS + "accepted/"
DRAFT_TOTALS = ("verify_steps", "rows", "rows_drafted", "tokens_emitted", "verify_seconds")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of each metric over its label sets."""
    totals: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, _, value = line.rpartition(" ")
        name = name_and_labels.split("{", 1)[0]
        try:
            totals[name] += float(value)
        except ValueError:
            continue
    return dict(totals)


def snapshot(url: str) -> dict[str, float]:
    """The server's counters now; keys missing where the server does not report them."""
    out: dict[str, float] = {}
    resp = requests.get(url + "/metrics", timeout=30)
    if resp.status_code == 200:
        metrics = parse_prometheus(resp.text)
        # A labelled counter appears only once it was first incremented: absent means 0.
        out.update({ours: metrics.get(theirs, 0.0) for ours, theirs in PROMETHEUS_COUNTERS.items()})
    info = requests.get(url + "/server_info", timeout=30).json()
    state = rksc_state(info) or {}
    for key, value in (state.get(Section.COUNTERS) or {}).items():
        if isinstance(value, dict):  # the histogram of decode steps by batch size
            out.update({f"{BY_BATCH}{batch}": float(n) for batch, n in value.items()})
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    # The semantic cache's own totals (semantic hits by source, slots freed by dedupe).
    out.update({k: float(v) for k, v in (state.get(Section.SEMANTIC) or {}).items()})
    # What eviction freed, by mark, and the marks programs sent (the rksc backend, any policy).
    out.update({k: float(v) for k, v in (state.get(Section.EVICTION) or {}).items()})
    # Decode-side reuse: requests replayed or coalesced, tokens they did not generate.
    out.update({k: float(v) for k, v in (state.get(Section.REUSE) or {}).items() if k != "on"})
    # Head compression: window-slot admissions deferred, decode shortfalls, interior windows dropped.
    heads = state.get(Section.HEADS) or {}
    counted = ("admissions_deferred", "decode_shortfalls", "interior_windows_dropped")
    out.update({f"heads_{k}": float(heads[k]) for k in counted if k in heads})
    out.update(drafts_counters(state.get(Section.DRAFTS) or {}))
    if "evictable_tokens" in state:
        out["tree_tokens"] = float(state["evictable_tokens"] + state["protected_tokens"])
    return out


def drafts_counters(drafts: dict[str, Any]) -> dict[str, float]:
    """The drafts section (`wire.DraftStats`) as flat counters; nothing where the server runs no drafts."""
    out = {f"{DRAFTS}{k}": float(drafts[k]) for k in DRAFT_TOTALS if isinstance(drafts.get(k), (int, float))}
    for prefix, key in ((BY_SHAPE, "steps_by_shape"), (DRAFTED, "drafted"), (ACCEPTED, "accepted")):
        out.update({f"{prefix}{name}": float(n) for name, n in (drafts.get(key) or {}).items()})
    return out


def difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """What happened between two snapshots; a peak (`*_max`) is the later reading, not a difference."""
    return {k: after[k] if k.endswith("_max") else after[k] - before.get(k, 0.0) for k in after}


def since(url: str, before: dict[str, float], started: float) -> tuple[float, dict[str, float]]:
    """Seconds since `started` (a `time.perf_counter()` reading) and the server's counters since `before`."""
    return time.perf_counter() - started, difference(snapshot(url), before)


def decode_steps_by_batch(counters: dict[str, float]) -> dict[int, float]:
    """The run's decode steps by batch size (rows), from its counters; batch sizes with no step left out."""
    steps = {int(k[len(BY_BATCH) :]): v for k, v in counters.items() if k.startswith(BY_BATCH)}
    return {batch: n for batch, n in sorted(steps.items()) if n > 0}


def decode_steps_by_shape(counters: dict[str, float]) -> dict[tuple[int, int], int]:
    """The run's drafts verify steps by shape (rows, tokens per row), from its counters; empty without drafts."""
    steps: dict[tuple[int, int], int] = {}
    for key, n in counters.items():
        if key.startswith(BY_SHAPE) and round(n) > 0:
            rows, _, tokens = key[len(BY_SHAPE) :].partition("x")
            steps[(int(rows), int(tokens or 1))] = round(n)
    return dict(sorted(steps.items()))


def decode_step_shapes(counters: dict[str, float]) -> dict[tuple[int, int], float]:
    """Every decode step of the run by (rows, tokens per row): the drafts' verify steps at their shapes, the
    other decode steps (the histogram by batch less the drafts steps of the same rows, never below 0) at one
    token per row. Without drafts: the histogram by batch, one token per row."""
    shaped = decode_steps_by_shape(counters)
    drafted_rows: dict[int, int] = defaultdict(int)
    for (rows, _), n in shaped.items():
        drafted_rows[rows] += n
    out: dict[tuple[int, int], float] = {}
    for batch, n in decode_steps_by_batch(counters).items():
        if n - drafted_rows.get(batch, 0) > 0:
            out[(batch, 1)] = n - drafted_rows.get(batch, 0)
    for shape, n in shaped.items():
        out[shape] = out.get(shape, 0) + n
    return dict(sorted(out.items()))
