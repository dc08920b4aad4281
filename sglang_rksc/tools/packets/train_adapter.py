"""Train a packet adapter by self-distillation on the calibration slice, on the CPU with transformers.

    python -m sglang_rksc.tools.packets.train_adapter --model smollm2-135m \\
        --output sglang_rksc/packets/adapters/smollm2-135m.safetensors

The examples (`adapter_data`: GSM8K problems from --start, the first --train for training and the next
--held-out for evaluation, all inside the calibration slice 0-299) are generated once and kept in --data. The
adapter's rows are the only trained numbers; the model stays frozen. Reported on the held-back prompts: the KL
to the full computation and the top-1 agreement, for plain reuse (no soft tokens), the adapter before training
and after, and the recovery ratio (the share of plain reuse's KL that the adapter removes).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sglang_rksc.packets.adapter import SOFT_TOKENS, PacketAdapter, placeholder_id
from sglang_rksc.packets.rope_shift import RopeShift
from sglang_rksc.tools.packets.distill import (
    GatherExample,
    StudentPlan,
    branch_kv,
    kl_per_token,
    plan,
    rope_shift_of,
    student_logprobs,
    teacher_logprobs,
    top1_agreement,
)

CALIBRATION_END = 300  # GSM8K 0-299 calibrate; 300+ report
HEADER_INIT = "\nThe candidate solution below is one of several:"
TRAILER_INIT = "\nThat was the end of this candidate solution.\n"


@dataclass
class Target:
    """An example made ready: both student layouts, the branches' KV, the teacher's log-probabilities."""

    plain: StudentPlan
    wrapped: StudentPlan
    kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]]
    teacher: torch.Tensor
    answer: list[int]


def prepare(model: Any, example: GatherExample, placeholder: int) -> Target:
    wrapped = plan(example, placeholder)
    used = {c.branch for c in wrapped.copies}
    kv = {b: [(k.bfloat16(), v.bfloat16()) for k, v in branch_kv(model, example.branches[b])] for b in used}
    teacher = teacher_logprobs(model, example.prompt_ids, example.answer_ids)
    return Target(plan(example, None), wrapped, kv, teacher, list(example.answer_ids))


def student(model: Any, shift: RopeShift, target: Target, rows: torch.Tensor | None) -> torch.Tensor:
    layout = target.plain if rows is None else target.wrapped
    return student_logprobs(model, layout, target.kv, shift, target.answer, rows)


def evaluate(model: Any, shift: RopeShift, targets: Sequence[Target], rows: torch.Tensor | None) -> dict[str, float]:
    """Mean KL to the full computation and top-1 agreement over `targets` (`rows` None: plain reuse)."""
    kls, agree = [], []
    with torch.no_grad():
        for target in targets:
            out = student(model, shift, target, rows)
            kls.append(float(kl_per_token(target.teacher, out)))
            agree.append(top1_agreement(target.teacher, out))
    return {"kl": sum(kls) / len(kls), "top1": sum(agree) / len(agree)}


def initial_rows(model: Any, tokenizer: Any) -> torch.Tensor:
    """Start from the embeddings of two plain phrases (a header-like and a trailer-like one)."""
    embed = model.get_input_embeddings().weight.detach()

    def phrase(text: str) -> torch.Tensor:
        ids = tokenizer.encode(text, add_special_tokens=False)[:SOFT_TOKENS]
        ids += [ids[-1]] * (SOFT_TOKENS - len(ids))
        return embed[ids].float()

    return torch.cat([phrase(HEADER_INIT), phrase(TRAILER_INIT)])


def train(
    model: Any,
    shift: RopeShift,
    targets: Sequence[Target],
    init: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, list[float]]:
    """Adam on the adapter's rows, one example per step; the rows and each epoch's mean training loss."""
    rows = torch.nn.Parameter(init.clone())
    optimizer = torch.optim.Adam([rows], lr=lr)
    order = list(range(len(targets)))
    rng = random.Random(seed)
    losses = []
    for epoch in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for i in order:
            optimizer.zero_grad()
            loss = kl_per_token(targets[i].teacher, student(model, shift, targets[i], rows))
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / len(order))
        log(f"epoch {epoch + 1}/{epochs}: training KL {losses[-1]:.4f}")
    return rows.detach().clone(), losses


def recovery(plain: float, adapted: float) -> float:
    """The share of plain reuse's gap to the full computation (KL 0) that the adapter closes."""
    return (plain - adapted) / plain if plain > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    from sglang.lang.chat_template import get_chat_template

    from sglang_rksc.programs import gsm8k
    from sglang_rksc.programs.model_profiles import profile_for
    from sglang_rksc.runtime.models import DEFAULT_MODEL, cache_root, model_dir
    from sglang_rksc.tools.packets import adapter_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a named embedded model (prepared)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--train", type=int, default=48, help="training problems")
    parser.add_argument("--held-out", type=int, default=16, help="problems after them, for the evaluation")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=None, help="per solution (default: the model's)")
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--data", type=Path, default=None, help="examples file (default: in the model cache)")
    parser.add_argument("--output", type=Path, required=True, help="the adapter file to write")
    parser.add_argument("--report", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    if args.start + args.train + args.held_out > CALIBRATION_END:
        parser.error(f"the problems must lie in the calibration slice (GSM8K 0-{CALIBRATION_END - 1})")
    torch.manual_seed(0)
    started = time.perf_counter()
    model, tokenizer = adapter_data.load_model(model_dir(args.model))
    max_tokens = args.max_tokens or profile_for(args.model).max_tokens["self_consistency_verify"]
    data = args.data or cache_root() / "packet-adapter-data" / f"{args.model}-s{args.samples}-t{max_tokens}.jsonl"
    template = get_chat_template("chatml")  # both named models speak ChatML
    examples = adapter_data.load_examples(data)
    problems = gsm8k.load_problems(args.start, args.train + args.held_out)
    for problem in problems:
        if problem.index not in examples:
            examples[problem.index] = adapter_data.make_example(
                model, tokenizer, problem, template, args.samples, max_tokens, args.answer_tokens
            )
            adapter_data.save_example(data, problem.index, examples[problem.index])
            print(f"example {problem.index}: {len(examples[problem.index].prompt_ids)} prompt tokens", flush=True)
    generated_s = time.perf_counter() - started
    placeholder = placeholder_id(tokenizer)
    shift = rope_shift_of(model)
    targets = [prepare(model, examples[p.index], placeholder) for p in problems]
    fit, held = targets[: args.train], targets[args.train :]
    init = initial_rows(model, tokenizer)
    before = {"plain": evaluate(model, shift, held, None), "adapter_init": evaluate(model, shift, held, init)}
    print(json.dumps(before), flush=True)
    rows, losses = train(model, shift, fit, init, epochs=args.epochs, lr=args.lr)
    trained = evaluate(model, shift, held, rows)
    figures = {
        "command": sys.argv if argv is None else ["train_adapter", *argv],
        "model": args.model,
        "problems": [args.start, args.start + args.train, args.start + args.train + args.held_out],
        "training_kl_per_epoch": losses,
        "held_out": {**before, "adapter": trained},
        "recovery_kl": recovery(before["plain"]["kl"], trained["kl"]),
        "spans_copied": sum(len(t.wrapped.copies) for t in held),
        "packets": sum(len(examples[p.index].packets) for p in problems[args.train :]),
        "seconds": {"examples": generated_s, "total": time.perf_counter() - started},
    }
    adapter = PacketAdapter(
        rows[:SOFT_TOKENS], rows[SOFT_TOKENS:], {"model": args.model, "figures": json.dumps(figures)}
    )
    adapter.save(args.output)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
