"""The adapter's soft tokens in the server: placeholders put into a request's prompt when it is queued, and
their adapter rows placed as SGLang's own embedding overrides (`replace_embeds`) in each prefill round.

A request with soft tokens never shares KV at or after its first soft token: its match in the tree stops there
(`match_limit`), and nothing of it is inserted (`skip_radix_cache_insert`), since its KV depends on vectors
that its token ids do not show.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import torch

from sglang_rksc.packets.adapter import wrap
from sglang_rksc.packets.spans import locate

SOFT_ATTR = "rksc_soft_tokens"  # on a Req: its SoftTokens


@dataclass(frozen=True)
class SoftTokens:
    positions: torch.Tensor  # int64: prompt positions of the soft tokens, ascending
    rows: torch.Tensor  # int64: the adapter row each takes

    def __post_init__(self) -> None:
        assert self.positions.shape == self.rows.shape and self.positions.numel() > 0


def insert(req: Any, packets: list[tuple[int, ...]], placeholder: int, context_len: int) -> bool:
    """Wrap each of the request's packets found in its prompt in soft tokens; False when none is found or the
    longer prompt would no longer fit the context (the request then runs as plain reuse)."""
    spans = locate(req.origin_input_ids, packets)
    if not spans:
        return False
    wrapped = wrap(list(req.origin_input_ids), spans, placeholder)
    if len(wrapped.ids) + (req.sampling_params.max_new_tokens or 0) > context_len:
        return False
    soft = SoftTokens(torch.tensor(wrapped.soft_positions), torch.tensor(wrapped.soft_rows))
    ids = array("q", wrapped.ids) if isinstance(req.origin_input_ids, array) else wrapped.ids
    # Nothing of the request changes before this point, so a failure above leaves it whole. Only the ids the
    # model reads change: the unpadded prompt that detokenisation offsets count stays.
    req.origin_input_ids = ids
    setattr(req, SOFT_ATTR, soft)
    req.skip_radix_cache_insert = True
    return True


def match_limit(req: Any) -> int | None:
    """The longest prefix of the request that may come from the tree (its first soft position), if limited."""
    soft = getattr(req, SOFT_ATTR, None)
    return None if soft is None else int(soft.positions[0])


def place(batch: Any, rows: torch.Tensor) -> None:
    """Give this prefill round's soft tokens their adapter rows (`rows`: `PacketAdapter.rows()`), beside any
    override SGLang set itself. Indices are into the round's token list, as SGLang's own are."""
    embeds, where = [], []
    offset = 0
    for row, req in enumerate(batch.reqs):
        soft = getattr(req, SOFT_ATTR, None)
        start, length = batch.prefix_lens[row], batch.extend_lens[row]
        if soft is not None:
            inside = (soft.positions >= start) & (soft.positions < start + length)
            where.append(soft.positions[inside] - start + offset)
            embeds.append(rows[soft.rows[inside]])
        offset += length
    if not where or sum(len(w) for w in where) == 0:
        return
    device = batch.device
    if batch.replace_positions is not None:
        where.insert(0, batch.replace_positions.cpu())
        embeds.insert(0, batch.replace_embeds.to(rows.device, rows.dtype))
    batch.replace_positions = torch.cat(where).to(device)
    batch.replace_embeds = torch.cat(embeds).to(device)
