"""The scheduler seams of audits: the batch about to run, its logits before sampling, its result.

On the scheduler's thread these run in order for one batch (CPU and non-overlapped GPU scheduling; drafts
never overlap), so the requests chosen before the forward are those whose logits the forward produces: one
row each, or under drafts one row per verified position (the step's width), of which the accepted run's are
kept.
"""

from __future__ import annotations

from typing import Any

from sglang_rksc.audits.recorder import AUDIT_ATTR, AuditRecorder
from sglang_rksc.config import RkscConfig


class _Active:
    recorder: AuditRecorder | None = None


def recorder() -> AuditRecorder | None:
    """This scheduler process's recorder (None: audits off, or not a scheduler)."""
    return _Active.recorder


def _start() -> AuditRecorder:
    if _Active.recorder is None:
        _Active.recorder = AuditRecorder(RkscConfig.current())
    return _Active.recorder


def choose_rows(original: Any, scheduler: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `Scheduler.run_batch`: the audited requests of a decode (drafts: verify) or prefill batch."""
    mode = getattr(batch, "forward_mode", None)
    if mode is not None and (mode.is_decode() or mode.is_extend()) and not mode.is_target_verify():
        audits = _start()
        rows = []
        for row, req in enumerate(batch.reqs):
            audit = audits.admit(req)
            if audit is not None and not req.finished():
                audit.length_before = len(req.output_ids)
                rows.append((row, req))
        audits.rows, audits.batch_size = rows, len(batch.reqs)
    try:
        return original(scheduler, batch, *args, **kwargs)
    finally:
        if _Active.recorder is not None:
            _Active.recorder.rows = []  # a forward that produced no logits for them keeps nothing


def read_logits(original: Any, processor: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `LogitsProcessor.forward`: the audited rows' top tokens, before the sampler runs."""
    output = original(processor, *args, **kwargs)
    audits = _Active.recorder
    if audits is not None and audits.rows:
        logits = getattr(output, "next_token_logits", None)
        width = step_width(kwargs.get("logits_metadata", args[3] if len(args) > 3 else None))
        if logits is not None and logits.dim() == 2 and logits.shape[0] >= audits.batch_size * width:
            audits.keep_rows(logits, width)
    return output


def step_width(forward_batch: Any) -> int:
    """Logits rows per request of this forward: a verify step's width under drafts, else one."""
    mode = getattr(forward_batch, "forward_mode", None)
    if mode is None or not mode.is_target_verify():
        return 1
    return int(getattr(getattr(forward_batch, "spec_info", None), "draft_token_num", 1) or 1)


def commit_result(original: Any, scheduler: Any, batch: Any, result: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `Scheduler.process_batch_result`: each audited row becomes its token's position."""
    out = original(scheduler, batch, result, *args, **kwargs)
    audits = _Active.recorder
    if audits is not None:
        for req in getattr(batch, "reqs", None) or []:
            if getattr(req, AUDIT_ATTR, None) is not None:
                audits.commit(req)
    return out
