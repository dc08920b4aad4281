"""Is a replayed result what a fresh greedy decode would give on this engine?

Replay answers a greedy request with the tokens its twin generated earlier.
That is lossless only if the engine would decode the same tokens again. This
runs GSM8K prompts greedily on a server with reuse off, first all at once (a
batch, as branches run) and then each alone (as a later twin would run),
and counts how many outputs are token-for-token identical, and where the
others first differ.

    python -m sglang_rksc.bench.replay_agreement --num-prompts 16

Writes results/replay_agreement.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from sglang_rksc.programs import gsm8k
from sglang_rksc.programs.common import positive_int
from sglang_rksc.runtime.server_process import LaunchedServer


def _generate(url: str, prompt: str, max_new_tokens: int) -> list[int]:
    body = {"text": prompt, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0}}
    resp = requests.post(url + "/generate", json=body, timeout=600)
    resp.raise_for_status()
    return resp.json()["output_ids"]


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token, None when identical."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def measure(url: str, prompts: list[str], max_new_tokens: int) -> dict:
    with ThreadPoolExecutor(len(prompts)) as pool:
        batched = list(pool.map(lambda p: _generate(url, p, max_new_tokens), prompts))
    alone = [_generate(url, p, max_new_tokens) for p in prompts]
    again = [_generate(url, p, max_new_tokens) for p in prompts]
    diffs = [first_difference(a, b) for a, b in zip(batched, alone, strict=True)]
    repeat_diffs = [first_difference(a, b) for a, b in zip(alone, again, strict=True)]
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "identical_batched_vs_alone": sum(d is None for d in diffs),
        "first_difference_batched_vs_alone": diffs,
        "identical_alone_vs_alone": sum(d is None for d in repeat_diffs),
        "first_difference_alone_vs_alone": repeat_diffs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.bench.replay_agreement",
        description="How often a fresh greedy decode repeats an earlier one on this engine (what replay assumes).",
    )
    parser.add_argument("--num-prompts", type=positive_int, default=16, help="GSM8K prompts, from problem 300")
    parser.add_argument("--max-new-tokens", type=positive_int, default=96, help="tokens generated per prompt")
    parser.add_argument("--output", default="results/replay_agreement.json", help="where the JSON goes")
    parser.add_argument("--server-args", default="", help="extra flags for the server, e.g. a model")
    args = parser.parse_args(argv)
    prompts = [f"Question: {p.question}\nAnswer:" for p in gsm8k.load_problems(300, args.num_prompts)]
    with LaunchedServer(shlex.split(args.server_args)) as server:
        result = measure(server.url, prompts, args.max_new_tokens)
    result["command"] = "python -m sglang_rksc.bench.replay_agreement " + " ".join(argv or sys.argv[1:])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    n = result["prompts"]
    print(
        f"greedy outputs identical: batched vs alone {result['identical_batched_vs_alone']}/{n}, "
        f"alone vs alone {result['identical_alone_vs_alone']}/{n} ({args.max_new_tokens} tokens each); "
        f"wrote {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
