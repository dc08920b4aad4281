"""How well ASKS's zero-forward probe tells apart spans that must not stand for each other, on one model.

The probe (`--rksc-probe`, `cache.embeddings.TokenProbe`) forks an unseen span onto a cached one when the
centred mean of their input-embedding rows has a cosine at or above `--rksc-probe-threshold`. This scores
pairs taken from a `bench.compare` journal of `self_consistency_verify`, one mode's rows:

- `questions`: the questions of two different problems (a fork at admission would answer the other one);
- `solutions, same answer` and `solutions, different answers`: two solutions of one problem (a verification
  fork would verify the other one).

Only pairs the span rules allow (`--rksc-length-ratio`) count. Per kind: the pairs, the median and largest
score, and how many reach the threshold. A probe with signal scores the first and third kinds below it.

    python -m sglang_rksc.bench.probe_pairs results/answers/scv-fp32 --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sglang_rksc.asks.planning import SpanRules
from sglang_rksc.bench.journal import FILE_NAME, JournalError, key_totals, read_records
from sglang_rksc.config import SemanticSettings

EMBEDDING_KEY = "model.embed_tokens.weight"


def pair_scores(
    rows: Mapping[int, Mapping[str, Any]],
    encode: Callable[[str], list[int]],
    score: Callable[[Sequence[int], Sequence[int]], float],
    rules: SpanRules,
) -> dict[str, list[float]]:
    """The probe's score on every comparable pair of each kind."""
    out: dict[str, list[float]] = {"questions": [], "solutions, same answer": [], "solutions, different answers": []}
    questions = {i: encode(r["question"]) for i, r in rows.items()}
    for a, b in itertools.combinations(sorted(questions), 2):
        if rules.comparable(len(questions[a]), len(questions[b])):
            out["questions"].append(score(questions[a], questions[b]))
    for row in rows.values():
        solutions = [encode(text) for text in row["solutions"]]
        answers = row["sample_answers"]
        for a, b in itertools.combinations(range(len(solutions)), 2):
            if rules.comparable(len(solutions[a]), len(solutions[b])):
                kind = "solutions, same answer" if answers[a] == answers[b] else "solutions, different answers"
                out[kind].append(score(solutions[a], solutions[b]))
    return out


def summary(scores: Mapping[str, list[float]], threshold: float) -> dict[str, dict[str, float]]:
    return {
        kind: {
            "pairs": len(values),
            "median": round(statistics.median(values), 4) if values else float("nan"),
            "max": round(max(values), 4) if values else float("nan"),
            "at_threshold": sum(v >= threshold for v in values),
        }
        for kind, values in scores.items()
    }


def load_embedding(folder: Path) -> Any:
    """The input-embedding matrix of a safetensors model folder."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            if EMBEDDING_KEY in f.keys():
                return f.get_tensor(EMBEDDING_KEY)
    raise ValueError(f"no {EMBEDDING_KEY} in the safetensors files of {folder}")


def journal_rows(folder: Path, mode: str) -> dict[int, dict[str, Any]]:
    """A `bench.compare` journal's rows of `mode` (its first repeat), the first recorded per problem."""
    records = read_records(folder / FILE_NAME)
    if records[0]["config"].get("program") != "self_consistency_verify":
        raise JournalError(f"{folder}: not a self_consistency_verify run")
    return key_totals(records[1:], f"{mode}#0").rows


def build_parser() -> argparse.ArgumentParser:
    defaults = SemanticSettings()
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.bench.probe_pairs",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folder", type=Path, help="a bench.compare output folder of self_consistency_verify")
    parser.add_argument("--mode", default="radix", help="whose rows (questions and solutions) to pair")
    parser.add_argument("--model", help="the named model the run served (default: smollm2-135m)")
    parser.add_argument("--model-path", help="or its folder")
    parser.add_argument("--threshold", type=float, default=defaults.probe_threshold, help="the probe threshold")
    parser.add_argument("--length-ratio", type=float, default=defaults.length_ratio, help="the span rules' ratio")
    parser.add_argument("--output", type=Path, help="write the summary here (JSON)")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    try:
        rows = journal_rows(args.folder, args.mode)
    except (OSError, JournalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {args.folder} has no rows of mode {args.mode}", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    from sglang_rksc.cache.embeddings import TokenProbe
    from sglang_rksc.runtime import models

    path = Path(args.model_path) if args.model_path else models.model_dir(args.model or models.DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    probe = TokenProbe(load_embedding(path))

    def score(a: Sequence[int], b: Sequence[int]) -> float:
        return probe.best(probe.embed(a), [probe.embed(b)])[1]

    rules = SpanRules(min_span=1, length_ratio=args.length_ratio)
    result = summary(pair_scores(rows, tokenizer.encode, score, rules), args.threshold)
    print(f"probe threshold {args.threshold}, {len(rows)} problems of {args.folder} ({args.mode}):")
    for kind, figures in result.items():
        print(
            f"  {kind}: {figures['pairs']} pairs, median {figures['median']}, max {figures['max']}, "
            f"{figures['at_threshold']} at or above the threshold"
        )
    if args.output:
        args.output.write_text(json.dumps({"threshold": args.threshold, "problems": len(rows), **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
