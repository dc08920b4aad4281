"""Which tokens keep their compressed heads' KV: SGLang hooks that take and give back window slots.

A sequence of length L needs window slots for its sinks [0, sink) and its recent window [L - window, L).
Slots are taken when SGLang allocates token slots for a batch (prefill or decode step) and given back:
- when a token the request owns (not yet in the radix tree: from `cache_protected_len` on) leaves the
  request's window;
- when its token slot is freed (eviction, abort, duplicate after insertion), whoever held it.
Tokens the tree owns keep their window slots while they are cached: the tree's nodes were inserted with
the window that ends them, which is what lets a later request continue from a node's end
(`complete_prefix` caps every match to such a point).
"""

from __future__ import annotations

from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams

from sglang_rksc.cache.tree_paths import attached
from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool, WindowPoolExhausted
from sglang_rksc.rlkv.tree_windows import drop_interior_windows


def pool_of(allocator: Any) -> HeadSplitKVPool | None:
    pool = getattr(allocator, "_kvcache", None)
    return pool if isinstance(pool, HeadSplitKVPool) else None


def complete_prefix(pool: HeadSplitKVPool, token_slots: torch.Tensor) -> int:
    """The longest p <= len(token_slots) at which a request may continue: every stored position its
    compressed heads' next query sees ([0, min(sink, p)) and [max(sink, p - window + 1), p)) has a window slot."""
    m = int(token_slots.numel())
    if m == 0:
        return 0
    sink, window = pool.layout.sink, pool.layout.window
    missing = ~pool.has_window(token_slots)
    sink_missing = missing[: min(sink, m)].nonzero()
    missing[: min(sink, m)] = False  # sinks are checked on their own, below
    counts = torch.zeros(m + 1, dtype=torch.long)
    counts[1:] = torch.cumsum(missing.long(), 0)
    ends = torch.arange(m + 1)
    starts = torch.clamp(ends - window + 1, min=sink).clamp(max=m)
    ok = (starts >= ends) | (counts[ends] - counts[torch.minimum(starts, ends)] == 0)
    if sink_missing.numel():
        ok &= ends <= int(sink_missing[0])
    return int(ends[ok].max())


def windows_held_by(pool: HeadSplitKVPool, req_to_token: torch.Tensor, reqs: list[Any]) -> int:
    """Window slots of the tokens these requests hold (their own and their locked prefixes, each counted
    once): the window slots in use, as opposed to those of evictable cached tokens."""
    rows = [
        req_to_token[req.kv.req_pool_idx, : req.kv.kv_allocated_len]
        for req in reqs
        if req.kv.req_pool_idx is not None and req.kv.kv_allocated_len > 0
    ]
    if not rows:
        return 0
    return int(pool.has_window(torch.cat(rows).unique()).sum())


def reclaim_windows(tree_cache: Any, pool: HeadSplitKVPool, need: int) -> bool:
    """Free `need` window slots: first those of cached interior nodes (`tree_windows`: no token is lost),
    then by evicting cached nodes (which frees their window slots); whether they are free."""
    root = getattr(tree_cache, "root_node", None)
    if need > pool.free_window_slots and root is not None:
        drop_interior_windows(root, pool, need - pool.free_window_slots)
    while need > pool.free_window_slots and tree_cache is not None and tree_cache.evictable_size() > 0:
        before = pool.free_window_slots
        tree_cache.evict(EvictParams(num_tokens=need - pool.free_window_slots))
        if pool.free_window_slots == before:
            break
    return need <= pool.free_window_slots


def _keep(tree_cache: Any, pool: HeadSplitKVPool, token_slots: torch.Tensor) -> None:
    """Window slots for these tokens, evicting cached nodes when the pool is short. Admission
    (`admit_with_windows`) and the decode gate (`decode_fits_windows`) make the shortfall unreachable."""
    need = int((pool.window_slot[token_slots] == 0).sum())
    if not reclaim_windows(tree_cache, pool, need):
        raise WindowPoolExhausted(
            f"the window pool is full ({pool.window_size} slots, {need} needed): raise --rksc-window-pool"
        )
    pool.keep_windows(token_slots)


def _slide(pool: HeadSplitKVPool, req: Any, row_slots: torch.Tensor, seq_len: int) -> None:
    """Give back the window slots of the request's own tokens that left its kept window."""
    layout = pool.layout
    lo = max(layout.sink, req.kv.cache_protected_len, pool.window_floors.get(req, 0))
    hi = seq_len - layout.kept_window
    if hi > lo:
        pool.drop_windows(row_slots[lo:hi])
        pool.window_floors[req] = hi


def after_alloc_for_extend(result: Any, batch: Any) -> Any:
    """AFTER hook of `alloc_for_extend`: the slide, then the new tokens' sinks, kept window and branch window
    (the slide first, so that it cannot drop the branch window just kept)."""
    pool = pool_of(batch.token_to_kv_pool_allocator)
    if pool is None:
        return result
    req_to_token = batch.req_to_token_pool.req_to_token
    for req, prefix_len, extend_len in zip(batch.reqs, batch.prefix_lens, batch.extend_lens, strict=True):
        seq_len = prefix_len + extend_len
        row = req_to_token[req.kv.req_pool_idx, :seq_len]
        if pool.window_floors.get(req, 0) > prefix_len:  # recomputed after a retraction
            pool.window_floors[req] = 0
        _slide(pool, req, row, seq_len)
        new = torch.arange(prefix_len, seq_len)
        kept = new[pool.layout.kept(new, seq_len, pool.branch_points.get(req, 0))]
        _keep(batch.tree_cache, pool, row[kept])
    return result


def after_alloc_for_decode(result: Any, batch: Any, token_per_req: int = 1) -> Any:
    """AFTER hook of `alloc_for_decode` (before SGLang adds the step to `seq_lens`)."""
    pool = pool_of(batch.token_to_kv_pool_allocator)
    if pool is None:
        return result
    if token_per_req != 1:
        raise NotImplementedError("head compression does not support speculative decoding")
    req_to_token = batch.req_to_token_pool.req_to_token
    _keep(batch.tree_cache, pool, result)
    for req, old_len in zip(batch.reqs, batch.seq_lens_cpu.tolist(), strict=True):
        seq_len = old_len + 1
        _slide(pool, req, req_to_token[req.kv.req_pool_idx, :seq_len], seq_len)
    return result


def free_with_windows(original: Any, allocator: Any, free_index: torch.Tensor) -> Any:
    """AROUND hook of the token allocator's `free`: a freed token slot gives back its window slot."""
    pool = pool_of(allocator)
    if pool is not None and allocator.free_group is None and free_index.numel():
        pool.drop_windows(free_index)
    return original(allocator, free_index)


def clear_windows(result: Any, allocator: Any) -> Any:
    """AFTER hook of the token allocator's `clear` (`/flush_cache`): every window slot is free again."""
    pool = pool_of(allocator)
    if pool is not None:
        pool.reset_windows()
    return result


# ---------------------------------------------------------------- reservation
# As SGLang does for token slots, admission reserves what a prefill takes now (exactly: its new sinks and
# window) plus one slot per running request for the next decode step, so `_keep` never falls short inside a
# batch; decode growth is not reserved ahead: the decode gate retracts requests when the pool runs short.


def extend_need(pool: HeadSplitKVPool, prefix_len: int, seq_len: int, branch_point: int = 0) -> int:
    """Window slots an extend of positions [prefix_len, seq_len) takes (`after_alloc_for_extend`). A chunk
    of that extend takes no more."""
    return int(pool.layout.kept(torch.arange(prefix_len, seq_len), seq_len, branch_point).sum())


def admit_with_windows(original: Any, adder: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook of `PrefillAdder.add_one_req`: admit a prefill only if the window pool (after evicting
    cached nodes, the request's own match pinned) holds it beside this round's other prefills and a decode
    step of every running request; otherwise stop the round (`NO_TOKEN`), as SGLang does for token slots."""
    pool = pool_of(adder.token_to_kv_pool_allocator)
    if pool is None:
        return original(adder, req, *args, **kwargs)
    from sglang.srt.managers.schedule_policy import AddReqResult

    if not _match_still_complete(adder.tree_cache, pool, req):
        pool.admissions_deferred += 1  # re-matched next round
        return AddReqResult.NO_TOKEN
    reserved = pool.reserved_by_round.get(adder)
    if reserved is None:  # first request this round: a decode step of each running request, chunks added before
        running = len(getattr(adder.running_batch, "reqs", None) or [])
        reserved = running + (pool.layout.per_request_bound + pool.layout.kept_window) * len(adder.can_run_list)
    branch_point = pool.branch_points.get(req, 0)
    need = extend_need(pool, req.prefix_len, len(req.full_untruncated_fill_ids), branch_point) + 1  # + a decode step
    if not _reclaim_keeping_match(adder.tree_cache, pool, reserved + need, req):
        pool.admissions_deferred += 1
        pool.reserved_by_round[adder] = reserved
        return AddReqResult.NO_TOKEN
    admitted_before = len(adder.can_run_list)
    result = original(adder, req, *args, **kwargs)
    pool.reserved_by_round[adder] = reserved + need * (len(adder.can_run_list) - admitted_before)
    return result


def _match_still_complete(tree_cache: Any, pool: HeadSplitKVPool, req: Any) -> bool:
    """Whether a new request's match, made before this round's admissions, is still whole: an earlier
    admission of the round may have evicted its nodes or dropped the window at its end for window slots."""
    last_node = getattr(req, "last_node", None)
    if last_node is None or req.prefix_len == 0 or not hasattr(tree_cache, "root_node") or req.kv.holds_kv:
        return True  # a chunk or retraction continuing, or nothing matched
    if not attached(tree_cache, last_node):
        return False
    prefix = tree_cache.path_device_indices(last_node)[: req.prefix_len]
    return prefix.numel() == req.prefix_len and complete_prefix(pool, prefix) == req.prefix_len


def _reclaim_keeping_match(tree_cache: Any, pool: HeadSplitKVPool, need: int, req: Any) -> bool:
    """`reclaim_windows` with the request's matched prefix pinned: it is not locked before SGLang admits it,
    and evicting it would leave the request pointing at freed slots (as SGLang pins it for its own budget)."""
    last_node = getattr(req, "last_node", None)
    lock = tree_cache.lock(last_node) if last_node is not None and tree_cache is not None else None
    try:
        return reclaim_windows(tree_cache, pool, need)
    finally:
        if lock is not None:
            tree_cache.unlock(lock)


def decode_fits_windows(original: Any, allocator: Any, **kwargs: Any) -> bool:
    """AROUND hook of the allocator's `check_decode_capacity`: the next step also needs a window slot per
    request (its new token, before the slide frees the oldest); short, SGLang's retraction frees some."""
    fits = original(allocator, **kwargs)
    pool = pool_of(allocator)
    requests = kwargs.get("requests")
    if pool is None or not fits or requests is None:
        return fits
    if reclaim_windows(kwargs.get("tree_cache"), pool, len(requests)):
        return True
    pool.decode_shortfalls += 1
    return False
