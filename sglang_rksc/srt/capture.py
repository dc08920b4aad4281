"""Capture of hidden states into `SlotStates`, inside the forwards SGLang runs anyway.

- Final-normed last-layer states: an AROUND hook on `LogitsProcessor.forward`,
  which sees every row of a batch (prefill: every token computed, decode: one
  per request) before last-token pruning, with the batch's `out_cache_loc`:
  `states[out_cache_loc] = hidden_states`. One scatter per forward; a CUDA
  graph records it like any tensor op.
- Several layers (`--rksc-pooling layers`): torch forward hooks on chosen
  decoder layers write the residual stream after each of them.

Only the scheduler process's live cache activates a store; elsewhere the hook
is one global check per forward.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from sglang_rksc.cache.embeddings import SlotStates

logger = logging.getLogger(__name__)

LOGITS_FORWARD_TARGET = "sglang.srt.layers.logits_processor.LogitsProcessor.forward"


class _Active:
    states: SlotStates | None = None
    owner: Any = None  # the main model's LogitsProcessor (a draft model has its own)
    layer_hooks: list[Any] = []


def activate(states: SlotStates, model: Any, pooling_layers: list[int] | None = None) -> None:
    """Make `states` the store the hooks write to; with layers, hook those decoder layers."""
    deactivate()
    _Active.states = states
    _Active.owner = getattr(model, "logits_processor", None)
    if pooling_layers:
        layers = model.model.layers
        for slot, index in enumerate(pooling_layers):
            _Active.layer_hooks.append(layers[index].register_forward_hook(_layer_hook(slot)))


def deactivate() -> None:
    for handle in _Active.layer_hooks:
        handle.remove()
    _Active.states, _Active.owner, _Active.layer_hooks = None, None, []


def pooled_layer_indices(num_layers: int, count: int) -> list[int]:
    """`count` layers spread over the upper half of the model, the last one included."""
    count = min(count, num_layers)
    start = num_layers // 2
    if count == 1:
        return [num_layers - 1]
    step = (num_layers - 1 - start) / (count - 1)
    return sorted({round(start + i * step) for i in range(count)})


def _rows_match(hidden_states: torch.Tensor, forward_batch: Any) -> torch.Tensor | None:
    loc = getattr(forward_batch, "out_cache_loc", None)
    if loc is None or hidden_states.dim() != 2 or hidden_states.shape[0] != loc.shape[0]:
        return None
    return loc


def capture_final_hidden_states(
    original: Any,
    processor: Any,
    input_ids: Any,
    hidden_states: Any,
    lm_head: Any,
    logits_metadata: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """AROUND hook on `LogitsProcessor.forward`."""
    states = _Active.states
    if states is not None and states.num_layers == 1 and (_Active.owner is None or processor is _Active.owner):
        loc = _rows_match(hidden_states, logits_metadata)
        if loc is not None:
            started = time.perf_counter()
            states.write(loc, hidden_states)
            _record(logits_metadata, time.perf_counter() - started)
    return original(processor, input_ids, hidden_states, lm_head, logits_metadata, *args, **kwargs)


def _record(forward_batch: Any, seconds: float) -> None:
    from sglang_rksc.srt.counters import record_capture

    mode = getattr(forward_batch, "forward_mode", None)
    record_capture(bool(mode is not None and mode.is_decode()), seconds)


def _layer_hook(slot: int) -> Any:
    def hook(module: Any, args: tuple, output: Any) -> None:
        states = _Active.states
        if states is None or len(args) < 3 or not isinstance(output, torch.Tensor):
            return
        from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

        forward_batch = args[2]
        loc = _rows_match(output, forward_batch)
        if loc is not None:
            started = time.perf_counter()
            states.write(loc, residual_batch.snapshot(output, forward_batch), layer=slot)
            _record(forward_batch, time.perf_counter() - started)

    return hook
