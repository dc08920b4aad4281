"""Self-distillation of the packet adapter with transformers: the server's packet computation rebuilt in one
model's forward, against the full computation of the same gather prompt.

- teacher: the gather prompt computed in full, then its own greedy answer; its log-probabilities at each
  answer position;
- student: what the server does with packets. Each packet's KV is taken from its branch's own sequence (as the
  radix tree holds it: computed after the question, without its siblings), its K turned to the new position
  (`RopeShift`, the server's code), and only the other tokens are computed, with the adapter's rows at the soft
  positions (`adapter.wrap`, the server's layout). Without rows it is plain reuse.

The loss is KL(teacher || student) over the answer tokens, averaged per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sglang_rksc.packets.adapter import wrap
from sglang_rksc.packets.rope_shift import RopeShift
from sglang_rksc.packets.spans import MIN_PACKET_TOKENS, find_run, locate


@dataclass
class GatherExample:
    """One gather prompt, with what its packets were computed from (JSON-friendly)."""

    prompt_ids: list[int]  # as the server tokenises the gather prompt
    packets: list[list[int]]  # each packet's tokens (its text tokenised alone)
    branches: list[list[int]]  # each branch's whole sequence: its prompt, then its generated tokens
    answer_ids: list[int]  # the full computation's greedy answer (teacher forcing)


@dataclass(frozen=True)
class Copy:
    start: int  # first position in the student's prompt
    length: int
    branch: int  # which branch's sequence holds the tokens
    source: int  # their first position there


@dataclass(frozen=True)
class StudentPlan:
    ids: list[int]  # the student's prompt (with placeholders when wrapped)
    soft_positions: list[int]
    soft_rows: list[int]
    copies: list[Copy]


def plan(example: GatherExample, placeholder: int | None) -> StudentPlan:
    """Where the server would put soft tokens (`placeholder` given: an adapter is on) and which spans it would
    copy from where: each packet found in the prompt, then its tokens in a branch, else its inner tokens."""
    spans = locate(example.prompt_ids, example.packets)
    ids, positions, rows = list(example.prompt_ids), [], []
    if placeholder is not None and spans:
        wrapped = wrap(example.prompt_ids, spans, placeholder)
        ids, positions, rows, spans = wrapped.ids, wrapped.soft_positions, wrapped.soft_rows, wrapped.spans
    copies = []
    for span in spans:
        candidates = [(span.start, span.tokens)]
        if len(span.tokens) - 2 >= MIN_PACKET_TOKENS:
            candidates.append((span.start + 1, span.tokens[1:-1]))
        found = _find_in_branches(example.branches, candidates)
        if found is not None:
            copies.append(found)
    assert all(c.start + c.length < len(ids) for c in copies), "the last prompt token must be computed"
    return StudentPlan(ids, positions, rows, copies)


def _find_in_branches(branches: Sequence[Sequence[int]], candidates: list[tuple[int, tuple[int, ...]]]) -> Copy | None:
    for start, tokens in candidates:
        for index, branch in enumerate(branches):
            at = find_run(branch, tokens)
            if at >= 0:
                return Copy(start, len(tokens), index, at)
    return None


def branch_kv(model: Any, branch: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the branch's K (rotated for its own positions) and V: [kv_heads, tokens, head_dim]."""
    with torch.no_grad():
        out = model(torch.tensor([list(branch)]), use_cache=True)
    return [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]


def rope_shift_of(model: Any) -> RopeShift:
    """The student's key rotation, from the transformers model's own rotary module."""
    rotary = model.model.rotary_emb
    if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise ValueError("this model's RoPE scales its cos/sin; packets cannot move its keys")
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    return RopeShift.of_inverse_frequencies(rotary.inv_freq, model.config.max_position_embeddings, head_dim)


def teacher_logprobs(model: Any, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> torch.Tensor:
    """[answer tokens, vocab]: the full computation's log-probabilities at each answer position."""
    ids = torch.tensor([[*prompt_ids, *answer_ids]])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]
    return F.log_softmax(logits.float(), dim=-1)


def student_logprobs(
    model: Any,
    student: StudentPlan,
    kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]],
    shift: RopeShift,
    answer_ids: Sequence[int],
    rows: torch.Tensor | None,
) -> torch.Tensor:
    """[answer tokens, vocab]: the packet computation's log-probabilities (differentiable in `rows`).
    `kv`: `branch_kv` of each branch a copy reads."""
    from transformers import DynamicCache

    ids = [*student.ids, *answer_ids]
    soft = dict(zip(student.soft_positions, student.soft_rows, strict=True))
    embed = model.get_input_embeddings()
    dtype = embed.weight.dtype
    cache = DynamicCache(config=model.config)
    cursor, logits = 0, None
    for segment_start, segment_end, copy in _segments(student.copies, len(ids)):
        if copy is not None:
            delta = torch.full((copy.length,), copy.start - copy.source, dtype=torch.int64)
            for layer, (keys, values) in enumerate(kv[copy.branch]):
                k = keys[:, copy.source : copy.source + copy.length].transpose(0, 1)  # tokens, heads, dim
                turned = shift.shift(k, delta).transpose(0, 1).unsqueeze(0).to(dtype)
                v = values[:, copy.source : copy.source + copy.length].unsqueeze(0).to(dtype)
                cache.update(turned, v, layer)
        else:
            x = embed(torch.tensor(ids[segment_start:segment_end]))
            if rows is not None:
                inside = [(p - segment_start, r) for p, r in soft.items() if segment_start <= p < segment_end]
                if inside:
                    where, which = zip(*inside, strict=True)
                    x = x.index_put((torch.tensor(where),), rows[list(which)].to(x.dtype))
            out = model(
                inputs_embeds=x.unsqueeze(0),
                position_ids=torch.arange(segment_start, segment_end).unsqueeze(0),
                past_key_values=cache,
                use_cache=True,
            )
            logits = out.logits[0]
        cursor = segment_end
    assert cursor == len(ids) and logits is not None
    answer = logits[len(logits) - len(answer_ids) - 1 : -1]
    return F.log_softmax(answer.float(), dim=-1)


def _segments(copies: Sequence[Copy], total: int) -> list[tuple[int, int, Copy | None]]:
    """The prompt cut into computed runs and copied spans, in order."""
    out: list[tuple[int, int, Copy | None]] = []
    cursor = 0
    for copy in sorted(copies, key=lambda c: c.start):
        if copy.start > cursor:
            out.append((cursor, copy.start, None))
        out.append((copy.start, copy.start + copy.length, copy))
        cursor = copy.start + copy.length
    out.append((cursor, total, None))
    return out


def kl_per_token(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student), both log-probabilities [tokens, vocab], averaged over tokens."""
    return (teacher.exp() * (teacher - student)).sum(-1).mean()


def top1_agreement(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """The share of answer positions where both would pick the same next token."""
    return float((teacher.argmax(-1) == student.argmax(-1)).float().mean())
