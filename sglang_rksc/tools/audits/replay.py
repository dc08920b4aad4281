"""The exact alternative of audited decisions: how far each approximate mechanism moved the next-token distribution.

Reads the audit log(s) a server wrote with `--rksc-audit-rate` (`sglang_rksc.audits`): per audited request,
the prompt the client sent, the tokens generated, and at sampled generated positions the top tokens of the
distribution the server decoded from (under ASKS, head compression, packets, or none: a control). Here the
same prompt and tokens run through the model in one full-attention forward (Hugging Face transformers, off
the serving path), and per position it reports

- the KL divergence KL(served || exact) over the served top tokens plus the rest of the mass lumped together
  (a coarsening of the full KL, so never above it), and
- whether the served top-1 token is the exact top-1 token,

per mechanism, with a 95% Wilson interval on the agreement. Controls measure the floor: the server's numerics
against this forward's with no approximation at all. With `--answers N`, the first N records of each mechanism
are also decoded again greedily from the client's prompt (exact), and the final answer in that text
(`gsm8k.extract_answer`) is compared with the one in the served text: the branch's answer both ways.

    python -m sglang_rksc.tools.audits.replay results/answers/tot/audits-*.jsonl --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sglang_rksc.tools.intervals import wilson


@dataclass(frozen=True)
class PositionCheck:
    kl: float  # KL(served || exact) over the served top tokens and the rest
    top1_agrees: bool


def coarse_kl(top_ids: Sequence[int], top_logprobs: Sequence[float], exact_logprobs: torch.Tensor) -> float:
    """KL(q || p) over the partition {each of q's top tokens} + {all the others}, q the served distribution
    (known on its top tokens only), p the exact one (a full row of log-probabilities). By the data processing
    inequality this is a lower bound of the full KL; it is 0 when q's kept mass matches p token by token."""
    q = torch.tensor(top_logprobs, dtype=torch.float64).exp()
    p = exact_logprobs.double()[list(top_ids)].exp()
    q_rest = max(0.0, 1.0 - float(q.sum()))
    p_rest = max(1e-12, 1.0 - float(p.sum()))
    kl = float((q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log())).sum())
    if q_rest > 1e-9:
        kl += q_rest * (math.log(q_rest) - math.log(p_rest))
    return max(0.0, kl)


def check_record(record: Mapping[str, Any], exact_logprobs: torch.Tensor) -> list[PositionCheck]:
    """Each kept position of one record against the exact forward's rows (`exact_logprobs[i]`: the
    distribution of the token after the first i + 1 tokens of prompt + output)."""
    start = len(record["prompt_ids"]) - 1  # the row that predicts the first generated token
    out = []
    for position, ids, logprobs in zip(record["positions"], record["top_ids"], record["top_logprobs"], strict=True):
        row = exact_logprobs[start + position]
        out.append(PositionCheck(coarse_kl(ids, logprobs, row), ids[0] == int(row.argmax())))
    return out


def exact_logprobs(model: Any, record: Mapping[str, Any]) -> torch.Tensor:
    """Log-probabilities of every next token over prompt + output, one full-attention forward."""
    ids = torch.tensor([[*record["prompt_ids"], *record["output_ids"]]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def answers_both_ways(model: Any, tokenizer: Any, record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(answer in the served text, answer in a greedy exact decode of as many tokens from the same prompt)."""
    from sglang_rksc.programs.gsm8k import extract_answer

    prompt = torch.tensor([record["prompt_ids"]])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=len(record["output_ids"]), do_sample=False)
    exact = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
    served = tokenizer.decode(record["output_ids"], skip_special_tokens=True)
    return extract_answer(served), extract_answer(exact)


def load_records(paths: Sequence[Path]) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def mechanism_key(record: Mapping[str, Any]) -> str:
    return "+".join(record["mechanisms"])


def summarize(checks: Mapping[str, Sequence[Sequence[PositionCheck]]]) -> dict[str, dict[str, Any]]:
    """Per mechanism: records, positions, KL mean / median / 95th percentile, top-1 agreement with its interval."""
    out = {}
    for key, per_record in sorted(checks.items()):
        flat = [c for record in per_record for c in record]
        if not flat:
            continue
        kls = sorted(c.kl for c in flat)
        agree = sum(c.top1_agrees for c in flat)
        low, high = wilson(agree, len(flat))
        out[key] = {
            "records": len(per_record),
            "positions": len(flat),
            "kl_mean": statistics.mean(kls),
            "kl_median": kls[len(kls) // 2],
            "kl_p95": kls[min(len(kls) - 1, int(0.95 * len(kls)))],
            "top1_agreement": agree / len(flat),
            "top1_agreement_ci": [low, high],
        }
    return out


def markdown(summary: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "| mechanism | requests | positions | KL mean / median / p95 (nats) | top-1 agreement (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for key, s in summary.items():
        low, high = s["top1_agreement_ci"]
        lines.append(
            f"| {key} | {s['records']} | {s['positions']} | {s['kl_mean']:.4f} / {s['kl_median']:.4f} / "
            f"{s['kl_p95']:.4f} | {s['top1_agreement']:.3f} ({low:.3f}-{high:.3f}) |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.tools.audits.replay",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("logs", nargs="+", type=Path, help="audit logs (--rksc-audit-log) of one model")
    parser.add_argument("--model", help="the named model the server ran (default: smollm2-135m)")
    parser.add_argument("--model-path", help="or its folder")
    parser.add_argument("--limit", type=int, help="at most this many records per mechanism (the first ones)")
    parser.add_argument("--answers", type=int, default=0, help="records per mechanism decoded again for the answer")
    parser.add_argument("--output", type=Path, help="write the per-record checks and the summary here (JSON)")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    missing = next((p for p in args.logs if not p.is_file()), None)
    records = [] if missing else load_records(args.logs)
    if not records:
        why = f"no such audit log: {missing}" if missing else "the audit logs hold no record (no --rksc-audit-rate?)"
        print(f"error: {why}", file=sys.stderr)
        return 2
    from sglang_rksc.runtime import models
    from sglang_rksc.tools.packets.adapter_data import load_model

    path = Path(args.model_path) if args.model_path else models.model_dir(args.model or models.DEFAULT_MODEL)
    model, tokenizer = load_model(path)
    checks: dict[str, list[list[PositionCheck]]] = defaultdict(list)
    answers: dict[str, list[tuple[str | None, str | None]]] = defaultdict(list)
    for record in records:
        key = mechanism_key(record)
        if args.limit is not None and len(checks[key]) >= args.limit:
            continue
        checks[key].append(check_record(record, exact_logprobs(model, record)))
        if len(answers[key]) < args.answers:
            answers[key].append(answers_both_ways(model, tokenizer, record))
    summary = summarize(checks)
    for key, pairs in answers.items():
        changed = sum(served != exact for served, exact in pairs)
        summary[key].update(
            answers_compared=len(pairs), answers_changed=changed, answers_changed_ci=wilson(changed, len(pairs))
        )
    print(markdown(summary))
    for key, s in summary.items():
        if s.get("answers_compared"):
            low, high = s["answers_changed_ci"]
            print(f"{key}: final answer changed against an exact greedy decode in {s['answers_changed']} of "
                  f"{s['answers_compared']} (95% CI {low:.2f}-{high:.2f})")  # fmt: skip
    if args.output:
        detail = {k: [[asdict(c) for c in r] for r in v] for k, v in checks.items()}
        args.output.write_text(json.dumps({"summary": summary, "checks": detail}, indent=1))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
