"""Span pooling and child search for ASKS: torch reference implementations.

These run on the CPU (our machines and CI) and are the reference any GPU
version (Triton) must match. No GPU version exists yet: none could be checked
on a lent GPU machine.

Shapes: a state pool is [slots, H] or, with several layers, [slots, L, H].
"""

from __future__ import annotations

import torch


def layer_weights(num_layers: int, top: float = 1.5) -> torch.Tensor:
    """RKSC's per-layer weights exp(linspace(0, top, L)), normalised to sum 1 (deeper layers count more)."""
    w = torch.exp(torch.linspace(0.0, top, num_layers, dtype=torch.float32))
    return w / w.sum()


def mean_pool(states: torch.Tensor, slots: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of `states[slots]` minus `center`, L2-normalised over the last dim (per layer)."""
    rows = states.index_select(0, slots).float()
    pooled = rows.mean(dim=0)
    if center is not None:
        pooled = pooled - center.float()
    return torch.nn.functional.normalize(pooled, dim=-1)


def cosines(query: torch.Tensor, candidates: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine of a normalised query [H] or [L, H] against K normalised candidates [K, H] or [K, L, H].

    With layers, the per-layer cosines are combined with `weights` [L].
    """
    if candidates.numel() == 0:
        return torch.empty(0)
    per_layer = (candidates.float() * query.float().unsqueeze(0)).sum(dim=-1)
    if per_layer.dim() == 1:
        return per_layer
    if weights is None:
        weights = layer_weights(per_layer.shape[1])
    return per_layer @ weights.to(per_layer.device)


def best_match(query: torch.Tensor, candidates: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[int, float]:
    """Index and cosine of the candidate nearest to `query`; (-1, -inf) when there is none."""
    scores = cosines(query, candidates, weights)
    if scores.numel() == 0:
        return -1, float("-inf")
    best = int(torch.argmax(scores))
    return best, float(scores[best])
