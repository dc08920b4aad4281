"""Which requests are audited, what is kept of each audited position, and the audit log."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from sglang.srt.constants import HEALTH_CHECK_RID_PREFIX  # SGLang's /health probes

from sglang_rksc.asks.request_edit import CLIENT_PROMPT_IDS
from sglang_rksc.config import RkscConfig
from sglang_rksc.packets.reuse import PACKETS_ATTR
from sglang_rksc.wire import Meta, Option, meta_entry, request_options

AUDIT_ATTR = "_rksc_audit"  # on an audited Req: its RequestAudit
DECIDED_ATTR = "_rksc_audit_decided"  # on every Req the recorder has seen: drawn once
CONTROL = "none"  # the mechanism list of a control: no approximate mechanism touched the request


def sampled(rid: str, rate: float) -> bool:
    """Whether request `rid` is audited: a hash of its id, so the draw does not depend on timing."""
    if rate <= 0:
        return False
    digest = hashlib.blake2b(rid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def mechanisms_of(req: Any, config: RkscConfig) -> list[str]:
    """The approximate mechanisms that touch this request's next-token distributions."""
    out = []
    semantic = meta_entry(req.customized_info, Meta.SEMANTIC)
    if semantic and semantic.get("source"):
        out.append("asks-" + semantic["source"])  # fork by probe or alias, or a fork's follow-up
    if config.heads.sparsity > 0:
        out.append("heads")
    if config.packets and getattr(req, PACKETS_ATTR, None):
        out.append("packets")
    return out


def client_prompt(req: Any) -> list[int]:
    """The prompt as the client sent it (ASKS may have rewritten a span, packets inserted soft tokens)."""
    ids = getattr(req, CLIENT_PROMPT_IDS, None)
    if ids is None:
        ids = req.origin_input_ids_unpadded if req.origin_input_ids_unpadded is not None else req.origin_input_ids
    return [int(t) for t in ids]


def emitted(req: Any) -> list[int]:
    """The tokens the client receives: a finish may cut the output short of what the request holds (a stop
    string, or under drafts a verify step's accepted run that crossed `max_new_tokens`)."""
    cut = getattr(req, "finished_len", None)
    ids = req.output_ids if cut is None else req.output_ids[:cut]
    return [int(t) for t in ids]


def spread(positions: list[int], keep: int) -> list[int]:
    """At most `keep` of `positions`, evenly spread from the first to the last."""
    if len(positions) <= keep:
        return positions
    if keep == 1:
        return positions[:1]
    return sorted({positions[round(i * (len(positions) - 1) / (keep - 1))] for i in range(keep)})


@dataclass
class RequestAudit:
    """What is kept of one audited request while it runs: per generated position, the top tokens."""

    mechanisms: list[str]
    top: dict[int, tuple[list[int], list[float]]] = field(default_factory=dict)  # position -> (ids, logprobs)
    # This step's rows (one, or a verify step's width under drafts), until its tokens are committed: row j
    # is the distribution of the step's j-th token.
    pending: list[tuple[list[int], list[float]]] = field(default_factory=list)
    length_before: int = 0


@dataclass
class AuditStats:
    """`/server_info`'s audit section."""

    rate: float = 0.0
    log: str = ""
    requests_seen: int = 0
    requests_audited: int = 0
    records_written: int = 0
    positions_written: int = 0
    by_mechanism: dict[str, int] = field(default_factory=dict)  # records written per mechanism (none: controls)

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class AuditRecorder:
    """The scheduler process's audits."""

    def __init__(self, config: RkscConfig) -> None:
        self.config = config
        self.settings = settings = config.audit
        path = settings.log or os.path.join(tempfile.gettempdir(), f"sglang-rksc-audits-{os.getpid()}.jsonl")
        self.stats = AuditStats(rate=settings.rate, log=path)
        self._lock = threading.Lock()
        self.rows: list[tuple[int, Any]] = []  # (index in the batch, request) of the batch about to run
        self.batch_size = 0  # requests in that batch

    def admit(self, req: Any) -> RequestAudit | None:
        """The request's audit, decided the first time it runs: None if it is not audited."""
        audit = getattr(req, AUDIT_ATTR, None)
        if audit is not None or getattr(req, DECIDED_ATTR, False):
            return audit
        setattr(req, DECIDED_ATTR, True)
        self.stats.requests_seen += 1
        rid = str(req.rid)
        if rid.startswith(HEALTH_CHECK_RID_PREFIX) or request_options(req).get(Option.CGEE) is not None:
            return None  # not a client's generation; verifications have their own audit (verify(audit=True))
        if not sampled(rid, self.settings.rate):
            return None
        audit = RequestAudit(mechanisms_of(req, self.config) or [CONTROL])
        setattr(req, AUDIT_ATTR, audit)
        self.stats.requests_audited += 1
        return audit

    def keep_rows(self, logits: torch.Tensor, width: int = 1) -> None:
        """This batch's logits, read before sampling: the top tokens of each audited request's rows
        (`width` consecutive rows per request: a verify step's under drafts)."""
        if not self.rows:
            return
        rows = [i * width + j for i, _ in self.rows for j in range(width)]
        index = torch.tensor(rows, dtype=torch.long, device=logits.device)
        logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
        values, ids = torch.topk(logprobs, k=min(self.settings.top_k, logprobs.shape[-1]), dim=-1)
        kept = [(top, [round(v, 5) for v in row]) for top, row in zip(ids.tolist(), values.tolist(), strict=True)]
        for n, (_, req) in enumerate(self.rows):
            getattr(req, AUDIT_ATTR).pending = kept[n * width : (n + 1) * width]
        self.rows = []

    def commit(self, req: Any) -> None:
        """After the batch's result: each row becomes the position of the token it produced, if one was (under
        drafts the accepted run's; a prefill chunk that samples nothing keeps none)."""
        audit: RequestAudit = getattr(req, AUDIT_ATTR)
        produced = len(req.output_ids) - audit.length_before
        for j, row in enumerate(audit.pending[: max(produced, 0)]):
            audit.top[audit.length_before + j] = row
        audit.pending = []
        if req.finished():
            self.finish(req, audit)

    def finish(self, req: Any, audit: RequestAudit) -> None:
        """Append the request's record (evenly spread positions) to the log, once."""
        delattr(req, AUDIT_ATTR)
        output = emitted(req)
        kept = [p for p in audit.top if p < len(output)]
        if not kept:
            return  # answered without a forward (replay), or aborted before its first token
        captured = spread(sorted(kept), self.settings.positions)
        record = {
            "rid": str(req.rid),
            "mechanisms": audit.mechanisms,
            "prompt_ids": client_prompt(req),
            "output_ids": output,
            "positions": captured,
            "top_ids": [audit.top[p][0] for p in captured],
            "top_logprobs": [audit.top[p][1] for p in captured],
            "semantic": meta_entry(req.customized_info, Meta.SEMANTIC),
        }
        line = json.dumps(record) + "\n"
        with self._lock, open(self.stats.log, "a", encoding="utf-8") as f:
            f.write(line)
        self.stats.records_written += 1
        self.stats.positions_written += len(captured)
        for mechanism in audit.mechanisms:
            self.stats.by_mechanism[mechanism] = self.stats.by_mechanism.get(mechanism, 0) + 1
