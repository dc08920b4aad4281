"""Scheduler hooks of decode-side reuse: answer, coalesce, or queue an arriving request.

`Scheduler._add_request_to_queue` (AROUND) is where every new request enters
the waiting queue. A deterministic request (`signature.reuse_key`) whose twin
finished and whose path is still in the tree is answered from the record,
with no forward; one whose twin is still running (and that does not stream)
waits for it instead of running; any other request is queued as usual and
becomes the leader of its key. `Scheduler.process_input_requests` (AFTER),
once per scheduler loop, serves the followers whose leader finished: from
its record, or, if the leader was aborted or its path is gone, by queueing
them after all.
"""

from __future__ import annotations

import copy
import logging
from array import array
from typing import Any

from sglang_rksc.cache.feature import feature_of
from sglang_rksc.reuse.signature import reuse_key
from sglang_rksc.reuse.store import KEY_ATTR, Record, ReuseStore
from sglang_rksc.wire import Meta, ReuseEntry

logger = logging.getLogger(__name__)


def _store(scheduler: Any) -> ReuseStore | None:
    return feature_of(getattr(scheduler, "tree_cache", None), ReuseStore.name)


def add_request_to_queue(original: Any, scheduler: Any, req: Any, is_retracted: bool = False, **kwargs: Any) -> Any:
    store = _store(scheduler)
    if store is None or is_retracted or getattr(req, KEY_ATTR, None) is not None:
        return original(scheduler, req, is_retracted, **kwargs)
    key = reuse_key(req)
    if key is None:
        return original(scheduler, req, is_retracted, **kwargs)
    setattr(req, KEY_ATTR, key)
    record = store.lookup(key)
    if record is not None:
        replay(scheduler, store, req, record, "replayed")
        return None
    leader = store.leader(key)
    if leader is not None and leader.finished():
        store.leader_done(key, leader)  # aborted before release: its followers are requeued
        leader = None
    if leader is not None:
        if not req.stream:
            store.follow(key, req)
            return None
        setattr(req, KEY_ATTR, None)  # a stream runs on its own and leads nothing
    else:
        store.lead(key, req)
    return original(scheduler, req, is_retracted, **kwargs)


def serve_followers(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER hook of `process_input_requests`: hand finished leaders' results to their followers."""
    store = _store(scheduler)
    if store is None or not (store.ready or store.followers):
        return result
    for key in store.stale_leaders():
        store.leader_done(key, store.leaders[key])
    for key, req in store.take_ready():
        record = store.lookup(key)
        if record is not None:
            replay(scheduler, store, req, record, "coalesced")
        else:
            setattr(req, KEY_ATTR, None)
            scheduler._add_request_to_queue(req)  # runs itself (or follows a new leader)
    return result


def replay(scheduler: Any, store: ReuseStore, req: Any, record: Record, how: str) -> None:
    """Finish `req` with the recorded output, without a forward, and send it to the client."""
    req.output_ids = array("q", record.output_ids)
    req.finished_reason = copy.copy(record.finished_reason)
    req.finished_len = record.finished_len
    req.cached_tokens = len(req.origin_input_ids)  # nothing was computed for it
    info = {k: copy.deepcopy(v) for k, v in record.customized_info.items()}
    entry: ReuseEntry = {how: True, "source_rid": record.rid, "tokens": len(record.output_ids)}  # type: ignore[misc]
    info[Meta.REUSE] = [entry]
    req.customized_info = {**(req.customized_info or {}), **info}
    store.stats.replayed += how == "replayed"
    store.stats.coalesced += how == "coalesced"
    store.stats.verdicts_reused += Meta.CGEE in record.customized_info
    store.stats.tokens_not_generated += len(record.output_ids)
    scheduler.output_streamer.stream_output([req], req.return_logprob)
