"""Gather prompts with packets against the same prompts computed in full, one problem at a time on one server
started with `--rksc-packets on`: prompt tokens computed, time to first token, and the answers.

    python -m sglang_rksc.bench.packets --start 300 --num-problems 16 --output results/packets/bench-smollm2.json

Per problem: the self-consistency prompt (GSM8K), `--samples` greedy solutions each opened with its own phrase
(so that they differ), then the universal self-consistency prompt over them (`lang.gather.gather_prompt`),
sent first with the solutions marked as packets and then in full. The request with packets leaves nothing in
the tree, so the full one is computed as if it came alone: both see the same cached question and the same
branches, and differ only in how the branches' KV got there. Times are streamed: the first chunk's arrival.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import requests

from sglang_rksc.lang.gather import gather_prompt
from sglang_rksc.programs import gsm8k
from sglang_rksc.programs.common import BRANCH_OPENINGS
from sglang_rksc.programs.self_consistency_verify import SOLVE_PROMPT
from sglang_rksc.wire import Meta, Option, meta_entry, with_options

MODES = ("packets", "full")


def _generate(url: str, text: str, max_tokens: int, packets: list[str] | None = None) -> tuple[dict, float]:
    """One streamed request: its last JSON and the seconds to its first chunk."""
    sampling: dict[str, Any] = {"max_new_tokens": max_tokens, "temperature": 0}
    if packets is not None:
        sampling["custom_params"] = with_options({Option.PACKETS: packets})
    started = time.perf_counter()
    first = None
    last: dict = {}
    with requests.post(
        url + "/generate", json={"text": text, "sampling_params": sampling, "stream": True}, stream=True, timeout=1800
    ) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                continue
            first = first if first is not None else time.perf_counter() - started
            last = json.loads(line[5:])
    return last, first or 0.0


def run_problem(
    url: str, problem: gsm8k.Problem, template: Any, samples: int, max_tokens: int, answer_tokens: int
) -> dict[str, Any]:
    user, user_end = template.get_prefix_and_suffix("user", [])
    assistant, _ = template.get_prefix_and_suffix("assistant", [])
    prefix = user + SOLVE_PROMPT.format(question=problem.question) + user_end
    _generate(url, prefix, 0)  # the shared question first, so that the branches share it as a prefix
    openings = [prefix + assistant + BRANCH_OPENINGS[i % len(BRANCH_OPENINGS)] for i in range(samples)]
    with concurrent.futures.ThreadPoolExecutor(samples) as pool:  # the branches run as one batch
        solutions = [reply["text"] for reply, _ in pool.map(lambda text: _generate(url, text, max_tokens), openings)]
    prompt = gather_prompt(prefix, solutions, chat_template=template)
    row: dict[str, Any] = {"index": problem.index, "gold": problem.answer}
    for mode in MODES:
        reply, ttft = _generate(url, prompt.text, answer_tokens, prompt.packets if mode == "packets" else None)
        meta = reply["meta_info"]
        info = meta_entry(meta, Meta.PACKETS) or {}
        row[mode] = {
            "ttft_s": ttft,
            "prompt_tokens": meta["prompt_tokens"],
            "cached_tokens": meta["cached_tokens"],
            "tokens_not_computed": info.get("tokens_not_computed", 0),
            "computed": meta["prompt_tokens"] - meta["cached_tokens"] - info.get("tokens_not_computed", 0),
            "prediction": gsm8k.extract_answer(reply["text"]),
            "text": reply["text"],
        }
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"problems": len(rows)}
    for mode in MODES:
        out[mode] = {
            "prompt_tokens": sum(r[mode]["prompt_tokens"] for r in rows),
            "computed": sum(r[mode]["computed"] for r in rows),
            "ttft_median_s": statistics.median(r[mode]["ttft_s"] for r in rows),
            "ttft_total_s": sum(r[mode]["ttft_s"] for r in rows),
            "accuracy": sum(r[mode]["prediction"] == r["gold"] for r in rows) / len(rows),
        }
    out["agreement"] = sum(r["packets"]["prediction"] == r["full"]["prediction"] for r in rows) / len(rows)
    out["computed_ratio"] = out["full"]["computed"] / max(1, out["packets"]["computed"])
    out["ttft_ratio"] = out["full"]["ttft_total_s"] / max(1e-9, out["packets"]["ttft_total_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    from sglang.lang.chat_template import get_chat_template

    from sglang_rksc.runtime.server_process import LaunchedServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=300)
    parser.add_argument("--num-problems", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=None, help="per solution (default: the model's)")
    parser.add_argument("--answer-tokens", type=int, default=48, help="for the gathered answer")
    parser.add_argument("--model", default=None, help="a named embedded model (default: smollm2-135m)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    from sglang_rksc.programs.model_profiles import profile_for

    max_tokens = args.max_tokens or profile_for(args.model or "smollm2").max_tokens["self_consistency_verify"]
    problems = gsm8k.load_problems(args.start, args.num_problems)
    template = get_chat_template("chatml")  # both named models speak ChatML
    model = ["--model", args.model] if args.model else []
    with LaunchedServer([*model, "--rksc-packets", "on"]) as server:
        rows = [run_problem(server.url, p, template, args.samples, max_tokens, args.answer_tokens) for p in problems]
    summary = summarize(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"command": sys.argv, "summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
