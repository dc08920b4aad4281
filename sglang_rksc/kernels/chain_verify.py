"""Verification of drafted token chains, in torch: the reference the CPU runs.

A row holds the last committed token followed by the draft `d_1..d_k` (padded to the batch's width); the
target forward gives one distribution per position. Position j's distribution is the model's next token
after `d_j` (position 0: after the committed token).

- Greedy rows keep the argmax chain: `d_{j+1}` is accepted while it equals the argmax at j, and the token
  after the last accepted draft is the argmax there. The output is what the model decodes one token at a time.
- Sampled rows use speculative sampling for a point-mass proposal (the draft is deterministic): `d_{j+1}` is
  accepted with probability p_j(d_{j+1}); on rejection the token is drawn from p_j with d_{j+1} removed and
  renormalised; after k accepted drafts one more token is drawn from p_k. Each emitted token is distributed
  exactly as p_j, the distribution the model samples from without drafts (Leviathan et al., 2023).
  SGLang's GPU kernel (`tree_speculative_sampling_target_only`) does the same for a one-hot draft.

No SGLang import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChainVerdict:
    tokens: list[list[int]]  # per row: the accepted drafts, then one token of the model's
    accepted: list[int]  # per row: drafts accepted (len(tokens[i]) - 1)


def verify_greedy(draft: torch.Tensor, lengths: list[int], logits: torch.Tensor) -> ChainVerdict:
    """`draft` [rows, width] (column 0: the committed token), `lengths[i]` real drafts of row i,
    `logits` [rows, width, vocab]."""
    predicted = logits.argmax(dim=-1)  # [rows, width]
    return _walk(draft, lengths, predicted.tolist())


def verify_sampled(
    draft: torch.Tensor, lengths: list[int], probs: torch.Tensor, generator: torch.Generator | None = None
) -> ChainVerdict:
    """`probs` [rows, width, vocab]: the distributions the model samples from (temperature, top-k/p applied)."""
    rows, width, _ = probs.shape
    uniform = torch.rand((rows, width), generator=generator, device=probs.device)
    tokens, accepted = [], []
    for i in range(rows):
        out: list[int] = []
        j = 0
        while True:
            if j < lengths[i]:
                proposed = int(draft[i, j + 1])
                p = float(probs[i, j, proposed])
                if float(uniform[i, j]) < p:
                    out.append(proposed)
                    j += 1
                    continue
                residual = probs[i, j].clone()
                residual[proposed] = 0.0
                out.append(_draw(residual, generator))
            else:
                out.append(_draw(probs[i, j], generator))
            break
        tokens.append(out)
        accepted.append(len(out) - 1)
    return ChainVerdict(tokens, accepted)


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    total = float(weights.sum())
    if not total > 0.0:  # all mass on the rejected token (rounding): the draft was the only choice
        return int(weights.argmax())
    return int(torch.multinomial(weights / total, 1, generator=generator))


def _walk(draft: torch.Tensor, lengths: list[int], predicted: list[list[int]]) -> ChainVerdict:
    proposed = draft.tolist()
    tokens, accepted = [], []
    for i, row in enumerate(predicted):
        m = 0
        while m < lengths[i] and proposed[i][m + 1] == row[m]:
            m += 1
        tokens.append(row[: m + 1])
        accepted.append(m)
    return ChainVerdict(tokens, accepted)


def sampling_probs(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """The distributions SGLang's sampler draws from: `logits` [rows, width, vocab] over temperature, then
    top-k, top-p and min-p applied and renormalised; the per-row settings are [rows] tensors."""
    probs = torch.softmax(logits.float() / temperature.view(-1, 1, 1).float(), dim=-1)
    ordered, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(ordered.shape[-1], device=probs.device).view(1, 1, -1)
    before = ordered.cumsum(dim=-1) - ordered  # mass strictly above each token
    keep = (
        (rank < top_k.view(-1, 1, 1).clamp(min=1))
        & (before < top_p.view(-1, 1, 1))
        & (ordered >= min_p.view(-1, 1, 1) * ordered[..., :1])
    )
    keep[..., 0] = True
    kept = torch.zeros_like(probs).scatter(-1, order, ordered * keep)
    return kept / kept.sum(dim=-1, keepdim=True)
