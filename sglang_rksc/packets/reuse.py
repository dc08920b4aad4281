"""The server side of packets: before a prefill runs, copy each found packet's KV into the request's slots
(K turned to the new positions) and take its tokens out of the forward.

`PacketReuse.prepare(batch)` runs after `ScheduleBatch.prepare_for_extend`, which has already given every
prompt token of the round a slot of the request's own (`req_to_token`). For each request that marked packets,
each packet lying inside this round's extend and cached in the tree is planned to be copied into those slots;
then the batch's token list, its slots and its extend lengths lose the copied positions, and the batch records,
per request, the positions that are still computed (the forward reads them: `attention`, `hooks`). The copies
themselves run when the forward batch is built (`run_copies`): on a GPU with SGLang's overlap scheduler that is
the forward stream, ordered after every earlier forward's KV writes, whereas `prepare` runs on the scheduler's
stream beside a forward that may still be writing a slot just freed and handed to this request. A request that
used a packet never enters the exact tree (`skip_radix_cache_insert`): its later KV depends on approximate KV.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from sglang_rksc.cache.feature import CacheFeature
from sglang_rksc.cache.tree_paths import Namespace
from sglang_rksc.kernels.rope_copy import triton_copy_turned
from sglang_rksc.packets import soft_tokens
from sglang_rksc.packets.adapter import PacketAdapter
from sglang_rksc.packets.attention import use_kernels
from sglang_rksc.packets.rope_shift import RopeShift
from sglang_rksc.packets.spans import MIN_PACKET_TOKENS, CachedSpan, PromptSpan, find_cached, locate
from sglang_rksc.wire import Meta, Option, PacketEntry, PacketStats, Section, put_meta, request_options

logger = logging.getLogger(__name__)

PACKETS_ATTR = "rksc_packet_tokens"  # on a Req: its packets, tokenised when it was queued
RECORD_ATTR = "rksc_packet_record"  # on a Req: its _PacketRecord
QUERY_ATTR = "rksc_query_positions"  # on a ScheduleBatch, then its ForwardBatch: {row: positions computed}
COPY_ATTR = "rksc_packet_copy"  # on a ScheduleBatch: the _KvCopy its forward runs first
FoundPacket = tuple[torch.Tensor, torch.Tensor, int]  # its cached slots, the request's slots, the shift between


class PacketReuse(CacheFeature):
    """Copies cached packets into requests' slots; a feature of the `rksc` cache (`--rksc-packets on`), which
    the scheduler hooks (`hooks`) reach through the cache."""

    name = "packets"

    def __init__(self, cache: Any, shift: RopeShift, adapter: PacketAdapter | None = None) -> None:
        self.cache = cache
        self.shift = shift
        self.adapter = adapter  # None: plain reuse (no soft tokens)
        self.adapter_rows = None if adapter is None else adapter.rows().float()
        self.adapter_name = "none" if adapter is None else adapter.info.get("model", "unnamed")
        self.stats = PacketStats()

    def limit_match(self, req: Any) -> int | None:
        """A request with soft tokens matches only before its first one (their KV is not its token ids')."""
        return soft_tokens.match_limit(req)

    def describe(self) -> dict[str, Any]:
        return {Section.PACKETS: {"on": True, "adapter": self.adapter_name, **self.stats.as_dict()}}

    def wrap_request(self, req: Any, placeholder: int, context_len: int) -> None:
        """When the request is queued: its packets get the adapter's soft tokens, unless it opted out."""
        packets = getattr(req, PACKETS_ATTR, None)
        if self.adapter is None or not packets or not _may_reuse(req):
            return
        if request_options(req).get(Option.ADAPTER, True) is False:
            return
        try:
            wrapped = soft_tokens.insert(req, packets, placeholder, context_len)
        except Exception:  # noqa: BLE001 - contained: the request runs as plain reuse, the scheduler serves on
            logger.exception("sglang-rksc: could not put soft tokens into a request; it runs without them")
            self.stats.failures += 1
            return
        if wrapped:
            self.stats.soft_tokens += len(getattr(req, soft_tokens.SOFT_ATTR).positions)

    def prepare(self, batch: Any) -> None:
        """Plan what can be copied; on any failure the batch is left whole (its copied slots are then simply
        computed over), so a packet can never take the scheduler down."""
        try:
            if self.adapter_rows is not None:
                soft_tokens.place(batch, self.adapter_rows)
            computed, copy = self._plan_batch(batch)
        except Exception:  # noqa: BLE001 - contained: the prefill runs as if no packet was marked
            logger.exception("sglang-rksc: packet reuse failed; the batch is computed in full")
            self.stats.failures += 1
            return
        if computed:
            _drop_copied_positions(batch, computed)
            setattr(batch, QUERY_ATTR, computed)
            setattr(batch, COPY_ATTR, copy)

    def run_copies(self, batch: Any) -> None:
        """The planned copy of a batch, once, before its forward (`hooks.computed_positions`). The plan's
        slots were checked when it was made; a failure here is logged and counted, not raised: the requests
        then read whatever those slots held, and the scheduler serves on."""
        copy = getattr(batch, COPY_ATTR, None)
        if copy is None:
            return
        setattr(batch, COPY_ATTR, None)
        try:
            self._copy(copy.source, copy.target, copy.delta)
        except Exception:  # noqa: BLE001 - contained, see above
            logger.exception("sglang-rksc: a packet copy failed")
            self.stats.failures += 1

    def _plan_batch(self, batch: Any) -> tuple[dict[int, torch.Tensor], _KvCopy | None]:
        """Per row, the positions left to compute; and one copy for every packet of the batch."""
        computed: dict[int, torch.Tensor] = {}
        found: list[FoundPacket] = []
        for row, req in enumerate(batch.reqs):
            packets = getattr(req, PACKETS_ATTR, None)
            if not packets or not _may_reuse(req):
                continue
            start = batch.prefix_lens[row]
            end = start + batch.extend_lens[row]
            kept = self._plan_packets(req, locate(req.origin_input_ids, packets), start, end, found)
            if kept is not None:
                computed[row] = kept
        return computed, _KvCopy.of(found) if found else None

    def _plan_packets(
        self, req: Any, spans: list[PromptSpan], start: int, end: int, found: list[FoundPacket]
    ) -> torch.Tensor | None:
        """Plan to copy the packets of `spans` that lie in [start, end) and are cached (each added to `found`);
        the positions left to compute."""
        space: Namespace = (req.extra_key, req.cache_salt)
        row = self.cache.req_to_token_pool.req_to_token[req.kv.req_pool_idx]
        reused: list[tuple[int, dict[str, int]]] = []  # (where the packet was found in the prompt, the copy)
        missed = 0
        keep = torch.ones(end - start, dtype=torch.bool)
        for span in spans:
            if span.start < start or span.end > end:
                continue  # matched exactly as a prefix, or in another chunk of this prompt
            at = span.start
            span, source = self._find(span, space)
            if source is None:
                missed += 1
                _record(req).missed.add(at)
                continue
            target = row[span.start : span.end]
            copied = self._copyable(source.slots, target)
            if bool(copied.any()):
                on_source, on_target = copied.to(source.slots.device), copied.to(target.device)
                found.append((source.slots[on_source], target[on_target], span.start - source.position))
            keep[span.start - start : span.end - start] = ~copied
            reused.append((at, {"start": span.start, "end": span.end, "from": source.position}))
        if end > start:
            keep[-1] = True  # the last prompt token is computed: its logits give the first output token
        self.stats.requests += 1
        self.stats.spans_reused += len(reused)
        self.stats.spans_missed += missed
        not_computed = int((~keep).sum())
        self.stats.tokens_not_computed += not_computed
        record = _record(req)
        for at, span in reused:
            part = keep[span["start"] - start : span["end"] - start]
            record.reused[at] = (span, int((~part).sum()))
        soft = getattr(req, soft_tokens.SOFT_ATTR, None)
        entry = PacketEntry(
            reused=[span for _, (span, _) in sorted(record.reused.items())],
            missed=len(record.missed - record.reused.keys()),
            tokens_not_computed=sum(n for _, n in record.reused.values()),
            soft_tokens=0 if soft is None else len(soft.positions),
        )
        put_meta(req, Meta.PACKETS, entry)
        if not reused:
            return None
        req.skip_radix_cache_insert = True
        return torch.nonzero(keep).flatten() + start

    def _copyable(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Which positions of a found packet are copied. All of them, but under head compression a position
        the request keeps a window for (its sinks and its recent window: its target slot holds a window slot)
        is copied only if its source kept one too: that position's compressed-head KV must be there, and the
        tree dropped it from the middle of cached text. Such a position is computed instead."""
        allocator = getattr(self.cache, "token_to_kv_pool_allocator", None)
        has_window = getattr(allocator.get_kvcache() if allocator is not None else None, "has_window", None)
        if has_window is None:
            return torch.ones(target.numel(), dtype=torch.bool)
        source, target = source.to(torch.int64), target.to(torch.int64)
        return (~has_window(target) | has_window(source)).cpu()

    def _find(self, span: PromptSpan, space: Namespace) -> tuple[PromptSpan, CachedSpan | None]:
        """The span as cached; else its inner tokens (the cached run was generated, and the tokens at its two
        ends may have been merged differently when its text was put into this prompt)."""
        source = find_cached(self.cache, span.tokens, space)
        if source is None and len(span.tokens) - 2 >= MIN_PACKET_TOKENS:
            span = PromptSpan(span.start + 1, span.tokens[1:-1])
            source = find_cached(self.cache, span.tokens, space)
        return span, source

    def _copy(self, source: torch.Tensor, target: torch.Tensor, delta: torch.Tensor) -> None:
        """Every layer's K (turned by `delta` [tokens] positions) and V from the cached slots into the request's;
        one rotation for all layers, on a GPU one kernel launch a layer (`kernels/rope_copy.py`)."""
        pool = self.cache.token_to_kv_pool_allocator.get_kvcache()
        source = source.to(pool.device, torch.int64)
        target = target.to(pool.device, torch.int64)
        cos, sin = self.shift.rotation(delta, pool.device)
        kernel = use_kernels(torch.device(pool.device))
        for k_layer, v_layer in zip(pool.k_buffer, pool.v_buffer, strict=True):
            if kernel:
                triton_copy_turned(k_layer, v_layer, source, target, cos, sin, self.shift.rotary_dim, self.shift.neox)
            else:
                k_layer[target] = self.shift.turn(k_layer[source], cos, sin)
                v_layer[target] = v_layer[source]
        copy_windows = getattr(pool, "copy_window_heads", None)  # a head-split pool: the window heads too
        if copy_windows is not None:
            self.stats.window_tokens_copied += copy_windows(source, target, cos, sin, self.shift.turn)


@dataclass(frozen=True)
class _KvCopy:
    """A batch's packets: every layer's KV of `source` slots into `target` slots, K turned by `delta`."""

    source: torch.Tensor  # int64 slots in the tree
    target: torch.Tensor  # int64 slots of the requests
    delta: torch.Tensor  # int64 positions, per token

    @classmethod
    def of(cls, found: list[FoundPacket]) -> _KvCopy:
        """One copy for all the packets found."""
        copy = cls(
            torch.cat([f[0].to(torch.int64) for f in found]),
            torch.cat([f[1].to(torch.int64) for f in found]),
            torch.cat([torch.full((len(f[0]),), f[2], dtype=torch.int64) for f in found]),
        )
        assert len(copy.source) == len(copy.target) == len(copy.delta), "a copy's slots disagree"
        assert int(copy.target.min()) > 0, "a copy into the pool's padding slot"
        return copy


@dataclass
class _PacketRecord:
    """What a request's prefill rounds reused, by prompt position: a chunked prompt adds to it, and a
    retracted request that is computed again replaces what it had (its meta counts each packet once)."""

    # keyed by where each packet was found in the prompt
    reused: dict[int, tuple[dict[str, int], int]] = field(default_factory=dict)  # -> (the copy, not computed)
    missed: set[int] = field(default_factory=set)


def _record(req: Any) -> _PacketRecord:
    record = getattr(req, RECORD_ATTR, None)
    if record is None:
        record = _PacketRecord()
        setattr(req, RECORD_ATTR, record)
    return record


def _may_reuse(req: Any) -> bool:
    """Requests whose prompt KV the token ids alone decide (and that want no prompt logprobs)."""
    overrides = getattr(req, "positional_embed_overrides", None)
    return not req.return_logprob and req.input_embeds is None and overrides is None


def _drop_copied_positions(batch: Any, computed: dict[int, torch.Tensor]) -> None:
    """Take the copied positions out of the batch's tokens, slots and extend lengths."""
    keep = torch.ones(batch.extend_num_tokens, dtype=torch.bool)
    offset = 0
    for row in range(len(batch.reqs)):
        length = batch.extend_lens[row]
        positions = computed.get(row)
        if positions is not None:
            mask = torch.zeros(length, dtype=torch.bool)
            mask[positions - batch.prefix_lens[row]] = True
            keep[offset : offset + length] = mask
            batch.extend_lens[row] = len(positions)
            batch.extend_logprob_start_lens[row] = min(batch.extend_logprob_start_lens[row], len(positions))
        offset += length
    assert offset == batch.extend_num_tokens, "extend lengths and token count disagree"
    if batch.replace_positions is not None:  # embedding overrides (soft tokens) follow their tokens
        kept = keep.to(batch.replace_positions.device)
        assert bool(kept[batch.replace_positions].all()), "an embedding override on a copied position"
        batch.replace_positions = (torch.cumsum(kept, 0) - 1)[batch.replace_positions]
    ids = batch.prefill_input_ids_cpu[keep]
    batch.prefill_input_ids_cpu = ids.pin_memory() if batch.prefill_input_ids_cpu.is_pinned() else ids
    batch.out_cache_loc = batch.out_cache_loc[keep.to(batch.out_cache_loc.device)]
    batch.extend_num_tokens = int(keep.sum())
