"""Layer exit for verification requests, through SGLang's hook registry (no fork of SGLang).

- `mark_request` (AFTER `Req.__init__`): a verification gets its `ExitSpec` and is never
  inserted into the radix tree when it may exit early (its upper layers' KV is missing).
  SGLang still frees its slots and keeps any prefix it matched (computed at full depth).
- `attach_rows` (AROUND `ForwardBatch.init_new`): the batch's rows, aligned with the
  forward's requests, go on `sampling_info`, the one object that reaches the forward
  (attributes set on the ForwardBatch itself are dropped when the runner copies it).
- `forward_with_exit` (AROUND `LlamaForCausalLM.forward`, `Qwen2ForCausalLM.forward`):
  runs the decoder layers itself; after each layer from a row's minimum on, the last
  position of every verification row goes through the final norm and the LM-head rows of
  its choices (`kernels.verdict`); the loop stops when every row of the batch is a
  verification that has settled. Then SGLang's own final norm and logits processor run on
  the exit layer's states, and each verification row's logits are replaced by its
  choices' log-probabilities at its exit layer, so the sampled token is the verdict.
- `keep_out_of_prefill_graph` (AROUND `PrefillCudaGraphRunner.can_run_graph`, GPU only):
  batches with verifications run eagerly, since a captured graph cannot break out of its loop.
- `isolate_verifications` (AROUND `PrefillAdder.add_one_req`): verifications and other
  requests are not admitted into the same prefill batch, since a mixed batch must run
  every layer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from sglang_rksc.exit.criterion import RowExit, first_checked_layer, update_rows
from sglang_rksc.exit.spec import ExitSpec, requested
from sglang_rksc.kernels.verdict import entropy, verdict_step
from sglang_rksc.wire import CgeeEntry, Meta, put_meta

logger = logging.getLogger(__name__)

SPEC_ATTR = "_rksc_exit_spec"
ROWS_ATTR = "rksc_cgee_rows"  # on ForwardBatch.sampling_info


def spec_of(req: Any) -> ExitSpec | None:
    return getattr(req, SPEC_ATTR, None)


def mark_request(result: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER hook on `Req.__init__`: read the spec the tokenizer process resolved."""
    params = getattr(getattr(req, "sampling_params", None), "custom_params", None)
    raw = requested(params)
    if raw is not None and "choice_ids" in raw:
        spec = ExitSpec.from_dict(raw)
        setattr(req, SPEC_ATTR, spec)
        if spec.early_exit:
            req.skip_radix_cache_insert = True
    return result


@dataclass
class BatchRows:
    """Per forward row (one per request of an extend batch): its spec if it is a
    verification in its last prefill chunk, else None; and the request, for meta_info."""

    specs: list[ExitSpec | None]
    reqs: list[Any]


def attach_rows(original: Any, cls: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `ForwardBatch.init_new` (a classmethod)."""
    fb = original(cls, batch, *args, **kwargs)
    info = getattr(fb, "sampling_info", None)
    if info is None:
        return fb
    rows = None
    mode = getattr(batch, "forward_mode", None)
    if mode is not None and mode.is_extend_without_speculative() and not batch.decoding_reqs:
        specs = []
        for req in batch.reqs:
            spec = spec_of(req)
            last_chunk = req.extend_end == len(req.full_untruncated_fill_ids)
            specs.append(spec if spec is not None and last_chunk else None)
        if any(s is not None for s in specs):
            rows = BatchRows(specs, list(batch.reqs))
    setattr(info, ROWS_ATTR, rows)
    return fb


def isolate_verifications(original: Any, adder: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `PrefillAdder.add_one_req`: stop admitting at a change of kind."""
    if adder.can_run_list:
        from sglang.srt.managers.schedule_policy import AddReqResult

        if _exits(adder.can_run_list[0]) != _exits(req):
            return AddReqResult.OTHER
    return original(adder, req, *args, **kwargs)


def keep_out_of_prefill_graph(original: Any, runner: Any, forward_batch: Any, *args: Any, **kwargs: Any) -> bool:
    """AROUND hook on `PrefillCudaGraphRunner.can_run_graph`: a captured graph cannot stop early."""
    if getattr(getattr(forward_batch, "sampling_info", None), ROWS_ATTR, None) is not None:
        return False
    return original(runner, forward_batch, *args, **kwargs)


def _exits(req: Any) -> bool:
    spec = spec_of(req)
    return spec is not None and spec.early_exit


def _fallback_reason(model: Any, forward_batch: Any, kwargs: dict[str, Any]) -> str | None:
    """Why this forward must run SGLang's own code path, or None."""
    if kwargs.get("get_embedding") or kwargs.get("pp_proxy_tensors") is not None:
        return "embedding or pipeline forward"
    inner = model.model
    if not (inner.pp_group.is_first_rank and inner.pp_group.is_last_rank):
        return "pipeline parallelism"
    if getattr(model, "capture_aux_hidden_states", False) or inner.layers_to_capture:
        return "auxiliary hidden-state capture"
    if model.lm_head.weight.shape[0] < model.config.vocab_size:
        return "vocabulary-parallel LM head (tensor parallelism)"
    return None


def forward_with_exit(original: Any, model: Any, input_ids: Any, positions: Any, forward_batch: Any, *args, **kwargs):
    """AROUND hook on the causal-LM `forward` of the Llama and Qwen2 families."""
    rows = getattr(getattr(forward_batch, "sampling_info", None), ROWS_ATTR, None)
    if rows is None:
        return original(model, input_ids, positions, forward_batch, *args, **kwargs)
    if len(rows.specs) != len(forward_batch.extend_seq_lens_cpu or []):
        logger.warning("rksc cgee: batch rows do not match the forward; running every layer")
        return original(model, input_ids, positions, forward_batch, *args, **kwargs)
    input_embeds = args[0] if args else kwargs.get("input_embeds")
    reason = _fallback_reason(model, forward_batch, kwargs)
    if reason is not None:
        out = original(model, input_ids, positions, forward_batch, *args, **kwargs)
        _report(rows, [None] * len(rows.specs), model, layers_run=None, note=reason)
        return out
    with torch.no_grad():
        return _run_layers(model, input_ids, positions, forward_batch, input_embeds, rows)


def _run_layers(model: Any, input_ids: Any, positions: Any, fb: Any, input_embeds: Any, rows: BatchRows) -> Any:
    from sglang.srt.layers.layer_boundary.residual import batch as residual_batch

    inner = model.model
    started = time.perf_counter()
    depth = inner.end_layer - inner.start_layer
    marked = [i for i, s in enumerate(rows.specs) if s is not None]
    trackers = [RowExit(rows.specs[i]) for i in marked]
    # Every row must be a verification that may exit for the batch to stop early.
    may_stop = len(marked) == len(rows.specs) and all(s.early_exit and not s.record for s in rows.specs)
    last_pos = torch.tensor(fb.extend_seq_lens_cpu, device=positions.device).cumsum(0) - 1
    marked_pos = last_pos[marked]
    weights = [model.lm_head.weight[list(t.spec.choice_ids)] for t in trackers]
    first_check = first_checked_layer(trackers)

    hidden = inner.embed_tokens(input_ids) if input_embeds is None else input_embeds
    residual_batch.start(fb)
    layers_run = depth
    for index in range(inner.start_layer, inner.end_layer):
        hidden = inner.layers[index](positions, hidden, fb)
        layer = index - inner.start_layer + 1
        if layer < first_check or layer == depth:
            continue
        probs, ent = _check(inner, residual_batch.snapshot(hidden, fb)[marked_pos], weights)
        if update_rows(trackers, layer, probs, ent) and may_stop:
            layers_run = layer
            break
    hidden = residual_batch.final_norm(hidden, fb, inner.norm)
    # The last layer's own distribution comes from the states the logits processor sees.
    final_probs, final_ent = _check(None, hidden[marked_pos], weights)
    if layers_run == depth:
        update_rows(trackers, depth, final_probs, final_ent)
    out = model.logits_processor(input_ids, hidden, model.lm_head, fb)
    results: list[RowExit | None] = [None] * len(rows.specs)
    for tracker, i, p in zip(trackers, marked, final_probs.tolist(), strict=True):
        results[i] = tracker
        tracker.final_probs = p
    _force_verdicts(out.next_token_logits, results, layers_run)
    # Each verification's share of the batch's forward time, so that shares add up over calls.
    share = (time.perf_counter() - started) / len(marked)
    _report(rows, results, model, layers_run=layers_run, seconds=share)
    return out


def _check(inner: Any, states: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Distribution over each row's choices and its entropy; `inner` given: apply the final norm first."""
    normed = inner.norm(states) if inner is not None else states
    if all(w.shape == weights[0].shape for w in weights):
        # One batched product when every row has as many choices (the usual case).
        stacked = torch.stack(weights)  # [R, C, H]
        logits = torch.einsum("rh,rch->rc", normed.float(), stacked.float())
        probs = torch.softmax(logits, dim=-1)
        return probs, entropy(probs)
    parts = [verdict_step(normed[r : r + 1], w) for r, w in enumerate(weights)]
    width = max(w.shape[0] for w in weights)
    probs = torch.zeros(len(weights), width)
    for r, (p, _) in enumerate(parts):
        probs[r, : p.shape[1]] = p[0]
    return probs, torch.cat([e for _, e in parts])


def _verdict_probs(row: RowExit, layers_run: int) -> list[float]:
    """The distribution the verdict is read from: at the row's exit layer, if it exited
    within the layers run and exit is on for it; else at the last layer run."""
    if row.spec.early_exit and row.exit_layer is not None and row.exit_layer <= layers_run:
        return row.exit_probs
    return row.final_probs


def _force_verdicts(logits: torch.Tensor | None, results: list[RowExit | None], layers_run: int) -> None:
    """Each verification row samples its verdict: only its choices keep a (log-probability) logit."""
    if logits is None or logits.shape[0] != len(results):
        return
    for i, row in enumerate(results):
        if row is None:
            continue
        probs = torch.tensor(_verdict_probs(row, layers_run)[: len(row.spec.choice_ids)], dtype=torch.float32)
        logits[i].fill_(float("-inf"))
        logits[i, list(row.spec.choice_ids)] = torch.log(probs.clamp_min(1e-12)).to(logits.dtype).to(logits.device)


def _report(rows: BatchRows, results: list[RowExit | None], model: Any, layers_run: int | None, **extra: Any) -> None:
    depth = model.model.end_layer - model.model.start_layer
    for req, spec, row in zip(rows.reqs, rows.specs, results, strict=True):
        if spec is None:
            continue
        info: CgeeEntry = {"num_layers": depth, "layers_run": layers_run if layers_run else depth}
        if row is not None:
            probs = _verdict_probs(row, info["layers_run"])[: len(spec.choice_ids)]
            info.update(
                verdict_index=int(max(range(len(probs)), key=probs.__getitem__)),
                probs=[round(p, 6) for p in probs],
                exit_layer=row.exit_layer,
                early_exit=spec.early_exit,
                stopped_early=info["layers_run"] < depth,
            )
            if spec.record:
                full = row.final_probs[: len(spec.choice_ids)] if info["layers_run"] == depth else None
                info["full_verdict_index"] = None if full is None else int(max(range(len(full)), key=full.__getitem__))
                info["profile"] = [[round(p, 5) for p in layer[: len(spec.choice_ids)]] for layer in row.profile]
                info["first_checked_layer"] = spec.min_layer
        for key, value in extra.items():
            info[key] = round(value, 6) if isinstance(value, float) else value
        put_meta(req, Meta.CGEE, info)
