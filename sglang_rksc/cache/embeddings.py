"""Embeddings of token spans for ASKS, from two sources.

`SlotStates`: hidden states kept per KV slot, written by the forward that
computed the slot's KV (see `sglang_rksc.srt.capture`), so a node's embedding
costs no extra forward: it is the pooled states of the node's slots. Node
splits need nothing (slots carry their states), freed slots are overwritten
when reused. States are centred by their running mean before the cosine:
raw hidden states are anisotropic (unrelated spans score ~0.85 raw).

`TokenProbe`: the mean of the model's input-embedding rows of a span, centred
by the mean row: what a span looks like before any forward has run on it.
The two spaces differ, so each compares only with its own kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sglang_rksc.kernels import similarity


class SlotStates:
    """Hidden states per KV slot: [slots, H], or [slots, L, H] for several layers."""

    def __init__(
        self,
        num_slots: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        self.num_layers = num_layers
        shape = (num_slots, hidden_size) if num_layers == 1 else (num_slots, num_layers, hidden_size)
        self.states = torch.zeros(shape, dtype=dtype, device=device)
        self.written = torch.zeros(num_slots, dtype=torch.bool, device=device)
        self._sum = torch.zeros(shape[1:], dtype=torch.float32, device=device)
        self._rows = 0  # rows summed per layer (host-side: the row count is known without a sync)
        self.weights = similarity.layer_weights(num_layers) if num_layers > 1 else None

    @property
    def num_slots(self) -> int:
        return self.states.shape[0]

    def write(self, slots: torch.Tensor, states: torch.Tensor, layer: int | None = None) -> None:
        """Record the states of the rows just computed into their KV slots."""
        assert states.shape[0] == slots.shape[0], (states.shape, slots.shape)
        if layer is None:
            assert self.num_layers == 1
            self.states[slots] = states.to(self.states.dtype)
            self._sum += states.float().sum(dim=0)
        else:
            self.states[slots, layer] = states.to(self.states.dtype)
            self._sum[layer] += states.float().sum(dim=0)
        if layer is None or layer == self.num_layers - 1:
            self.written[slots] = True
            self._rows += int(slots.shape[0])

    def center(self) -> torch.Tensor | None:
        return self._sum / self._rows if self._rows else None

    def span_embedding(self, slots: torch.Tensor) -> torch.Tensor | None:
        """Centred, normalised pooled states of `slots`; None if any slot has no state."""
        if slots.numel() == 0 or not bool(self.written[slots].all()):
            return None
        return similarity.mean_pool(self.states, slots, self.center())

    def best(self, query: torch.Tensor, candidates: Sequence[torch.Tensor]) -> tuple[int, float]:
        if not candidates:
            return -1, float("-inf")
        return similarity.best_match(query, torch.stack(list(candidates)), self.weights)


class TokenProbe:
    """Zero-forward span embedding from the model's input-embedding matrix."""

    def __init__(self, embedding_weight: torch.Tensor) -> None:
        self.weight = embedding_weight
        self.center = embedding_weight.float().mean(dim=0)

    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.as_tensor(list(token_ids), dtype=torch.int64, device=self.weight.device)
        return similarity.mean_pool(self.weight, ids, self.center)

    def best(self, query: torch.Tensor, candidates: Sequence[torch.Tensor]) -> tuple[int, float]:
        if not candidates:
            return -1, float("-inf")
        return similarity.best_match(query, torch.stack(list(candidates)))
