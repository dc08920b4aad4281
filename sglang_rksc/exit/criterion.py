"""The entropy-stabilised exit rule, row by row over a batch's verification rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sglang_rksc.exit.spec import ExitSpec


@dataclass
class RowExit:
    """One verification row's progress through the layers."""

    spec: ExitSpec
    entropies: list[float] = field(default_factory=list)  # from spec.min_layer on
    exit_layer: int | None = None  # layers run when the rule fired
    exit_probs: list[float] | None = None  # distribution over the choices there
    profile: list[list[float]] = field(default_factory=list)  # with record: every layer's distribution
    final_probs: list[float] | None = None  # distribution at the last layer the forward ran

    def observe(self, layer: int, probs: list[float], entropy: float) -> bool:
        """Feed the distribution after `layer` layers; True once the rule has fired."""
        if self.spec.record:
            self.profile.append(probs)
        if layer < self.spec.min_layer:
            return False
        if self.exit_layer is not None:
            return True
        self.entropies.append(entropy)
        rule = self.spec.rule
        window = self.entropies[-(rule.k + 1) :]
        if len(window) == rule.k + 1 and entropy < rule.theta and max(abs(entropy - e) for e in window[:-1]) < rule.eps:
            self.exit_layer, self.exit_probs = layer, probs
        return self.exit_layer is not None


def first_checked_layer(rows: list[RowExit]) -> int:
    """Recording rows are checked from the first layer, the others from their minimum."""
    return min(1 if r.spec.record else r.spec.min_layer for r in rows)


def update_rows(rows: list[RowExit], layer: int, probs: torch.Tensor, entropy: torch.Tensor) -> bool:
    """Feed one layer to every row; True when all have settled."""
    probs_host, entropy_host = probs.tolist(), entropy.tolist()
    settled = [row.observe(layer, p, h) for row, p, h in zip(rows, probs_host, entropy_host, strict=True)]
    return all(settled)
