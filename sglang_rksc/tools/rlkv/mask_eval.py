"""How far a whole head mask moves the model: the calibrated mask against random ones at equal sparsity.

The calibration scores heads one at a time; a server compresses many at once. For each sparsity this runs
held-out traces (GSM8K problems the scores were not made on) with every head of a mask compressed together:
the mask cut from the scores file, `--random` masks of the same size drawn uniformly, and the mask of the
highest-scored heads (the calibration's worst choice). Each is reported as the mean KL(full || masked) per
generated token and the share of tokens whose greedy choice is unchanged. Transformers, float32, CPU:

    python -m sglang_rksc.tools.rlkv.mask_eval --model smollm2-135m --start 8 --num-problems 8 \\
        --sparsities 0.2,0.4,0.6 --random 3 --output results/rlkv/mask-eval.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sglang_rksc.rlkv.head_mask import HeadScores, packaged
from sglang_rksc.tools.rlkv.calibrate import (
    Runner,
    add_trace_arguments,
    model_and_traces,
    set_compressed,
    traces_description,
)

Mask = list[list[bool]]


@dataclass(frozen=True)
class MaskFigures:
    mask: str  # calibrated, random-<seed>, highest-scored
    sparsity: float
    heads: int
    kl_per_token: float
    greedy_unchanged: float  # share of tokens whose argmax is the full model's


def random_mask(num_layers: int, num_kv_heads: int, count: int, seed: int) -> Mask:
    chosen = set(random.Random(seed).sample(range(num_layers * num_kv_heads), count))
    return [[layer * num_kv_heads + head in chosen for head in range(num_kv_heads)] for layer in range(num_layers)]


def highest_scored(scores: HeadScores, count: int) -> Mask:
    mask = [[False] * scores.num_kv_heads for _ in range(scores.num_layers)]
    for layer, head in scores.ranking()[::-1][:count]:
        mask[layer][head] = True
    return mask


def divergence(model, runners: list[Runner], mask: Mask, sink: int, window: int) -> tuple[float, float]:
    """(mean KL per token, share of unchanged greedy choices) over the runners' measured tokens."""
    layer_heads = {layer: [h for h, c in enumerate(row) if c] for layer, row in enumerate(mask) if any(row)}
    if not layer_heads:
        return 0.0, 1.0
    set_compressed(model, layer_heads, sink, window)
    kl_total, same_total, tokens = 0.0, 0, 0
    with torch.no_grad():
        for runner in runners:
            kl, same = runner.divergence(min(layer_heads))
            kl_total += float(kl.sum())
            same_total += int(same.sum())
            tokens += kl.numel()
    set_compressed(model, {}, sink, window)
    return kl_total / tokens, same_total / tokens


def evaluate(
    model, runners: list[Runner], scores: HeadScores, sparsities: list[float], random_masks: int
) -> list[MaskFigures]:
    out = []
    for sparsity in sparsities:
        count = round(sparsity * scores.total_heads)
        masks = {"calibrated": scores.compressed_heads(sparsity), "highest-scored": highest_scored(scores, count)}
        for seed in range(random_masks):
            masks[f"random-{seed}"] = random_mask(scores.num_layers, scores.num_kv_heads, count, seed)
        for name, mask in masks.items():
            kl, same = divergence(model, runners, mask, scores.sink, scores.window)
            out.append(MaskFigures(name, sparsity, count, kl, same))
            print(f"sparsity {sparsity} {name}: KL {kl:.4f}, greedy unchanged {same:.3f}", file=sys.stderr)
    return out


def markdown(figures: list[MaskFigures]) -> str:
    lines = ["| sparsity | mask | heads | KL per token (nats) | greedy choice unchanged |", "|---|---|---|---|---|"]
    lines += [
        f"| {f.sparsity} | {f.mask} | {f.heads} | {f.kl_per_token:.4f} | {f.greedy_unchanged:.3f} |" for f in figures
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from sglang_rksc.runtime import models

    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.tools.rlkv.mask_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--scores", type=Path, default=None, help="head-scores file (default: the shipped one)")
    parser.add_argument("--start", type=int, default=8, help="first held-out GSM8K problem")
    parser.add_argument("--num-problems", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--sparsities", default="0.2,0.4,0.6")
    parser.add_argument("--random", type=int, default=3, help="random masks per sparsity")
    parser.add_argument("--output", type=Path, required=True)
    add_trace_arguments(parser)
    args = parser.parse_args(argv)
    scores = HeadScores.load(args.scores or packaged(args.model))
    began = time.monotonic()
    model, traces = model_and_traces(
        args.model, args.start, args.num_problems, args.max_new_tokens, args.traces_via_server
    )
    set_compressed(model, {}, scores.sink, scores.window)
    with torch.no_grad():
        runners = [Runner(model, trace) for trace in traces]
    figures = evaluate(model, runners, scores, [float(x) for x in args.sparsities.split(",")], args.random)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "model": args.model,
                "traces": traces_description(args, traces),
                "tokens": sum(r.full_logprobs.shape[0] for r in runners),
                "seconds": time.monotonic() - began,
                "figures": [asdict(f) for f in figures],
            },
            indent=1,
        )
    )
    print(markdown(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
