"""How long a model's generations are when nothing cuts them: what the programs' budgets should be.

    python -m sglang_rksc.programs.tree_of_thought --model qwen2.5-coder-1.5b --start 0 --num-problems 8 \\
        --max-tokens 768 --temperature 0 --diversify --output results/lengths/tot.jsonl
    python -m sglang_rksc.bench.lengths results/lengths/tot.jsonl --model qwen2.5-coder-1.5b --cap 768

Reads a program's result rows (`--output`), tokenizes each generated text with
the model's tokenizer, and prints the length distribution per step (plans,
solutions, reflections), the share that reached the cap (cut off), and the
budget that would have let a given share finish (`--quantile`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def texts_by_step(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The generated texts of each step, from any program's rows."""
    steps: dict[str, list[str]] = {}
    for row in rows:
        for branch in row.get("branches") or []:  # tree_of_thought
            for step in ("plan", "solution", "reflection"):
                steps.setdefault(step, []).append(branch[step])
        for text in row.get("solutions") or []:  # self_consistency_verify
            steps.setdefault("solution", []).append(text)
    return steps


def summarize(lengths: Sequence[int], cap: int | None, quantile: float) -> dict[str, Any]:
    ordered = sorted(lengths)
    at = min(len(ordered) - 1, int(quantile * len(ordered)))
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
        "cut_off": sum(n >= cap for n in ordered) if cap else None,
        f"budget_for_{quantile:g}": ordered[at],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_rksc.bench.lengths", description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", type=Path, help="a program's --output JSON lines")
    parser.add_argument("--model", default="smollm2-135m", help="the named model whose tokenizer counts tokens")
    parser.add_argument("--cap", type=int, help="the --max-tokens the run used (to count what was cut off)")
    parser.add_argument("--quantile", type=float, default=0.95, help="share of generations a budget must let finish")
    args = parser.parse_args(argv)
    if not args.rows.is_file():
        parser.error(f"no such file: {args.rows}")
    from transformers import AutoTokenizer

    from sglang_rksc.runtime import models

    tokenizer = AutoTokenizer.from_pretrained(models.prepare(args.model))
    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    report = {}
    for step, texts in texts_by_step(rows).items():
        lengths = [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
        report[step] = summarize(lengths, args.cap, args.quantile)
        print(f"{step}: " + ", ".join(f"{k} {v}" for k, v in report[step].items()))
    args.rows.with_suffix(".lengths.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
