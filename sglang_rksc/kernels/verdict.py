"""Verdict of a verification at an intermediate layer: torch reference implementation.

For each verification row, the hidden state after a layer is normalised with
the model's final norm and projected onto the LM-head rows of the choice
tokens only ("logit lens" restricted to the choices), then softmaxed; the
entropy of that distribution (in nats) tells whether the verdict has settled.

This runs on the CPU (our machines and CI) and is the reference a GPU version
(Triton) must match; none exists yet, as none could be checked on a GPU.
"""

from __future__ import annotations

import torch


def choice_logits(hidden: torch.Tensor, choice_weight: torch.Tensor) -> torch.Tensor:
    """Logits of the choices: hidden [R, H] (already final-normed), choice_weight [C, H] -> [R, C] in float32."""
    return hidden.float() @ choice_weight.float().t()


def choice_distribution(hidden: torch.Tensor, choice_weight: torch.Tensor) -> torch.Tensor:
    """Softmax over the choices -> [R, C]."""
    return torch.softmax(choice_logits(hidden, choice_weight), dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of a distribution [R, C] -> [R]."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)


def verdict_step(hidden: torch.Tensor, choice_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's check: (distribution over the choices [R, C], its entropy [R])."""
    probs = choice_distribution(hidden, choice_weight)
    return probs, entropy(probs)
