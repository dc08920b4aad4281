"""Gather prompts with packets (with the adapter, and plain) against the same prompts computed in full, one
problem at a time on one server started with `--rksc-packets on`: prompt tokens computed, time to first token,
the answers, and how much of plain reuse's departure from the full answers the adapter recovers.

    python -m sglang_rksc.bench.packets --start 300 --num-problems 16 --output results/packets/bench-smollm2.json

Per problem: the self-consistency prompt (GSM8K), `--samples` greedy solutions each opened with its own phrase
(so that they differ), then the universal self-consistency prompt over them (`lang.gather.gather_prompt`),
sent with the solutions marked as packets (with the adapter, then plain), then in full. A request with packets
leaves nothing in the tree, so each later one is computed as if it came alone: all see the same cached question
and the same branches, and differ only in how the branches' KV got there. The adapter is the server's
(`--adapter`, by default the one shipped for the model); the plain request opts out of it. Times are streamed:
the first chunk's arrival.
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
from sglang_rksc.runtime import cost_model
from sglang_rksc.runtime.cost_model import CostModel
from sglang_rksc.tools.packets.gather_cases import case_prompts
from sglang_rksc.wire import Meta, Option, meta_entry, with_options

# adapter: packets with the server's adapter (soft tokens); plain: packets reused as they are (the request opts
# out of the adapter); full: no packets, the prompt computed (= the plain-text concatenation of the branches).
MODES = ("adapter", "plain", "full")
OPTIONS = {"adapter": {}, "plain": {Option.ADAPTER: False}}


def _generate(url: str, text: str, max_tokens: int, options: dict[str, Any] | None = None) -> tuple[dict, float]:
    """One streamed request: its last JSON and the seconds to its first chunk."""
    sampling: dict[str, Any] = {"max_new_tokens": max_tokens, "temperature": 0}
    if options is not None:
        sampling["custom_params"] = with_options(options)
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
    case = case_prompts(problem, template, samples)
    _generate(url, case.prefix, 0)  # the shared question first, so that the branches share it as a prefix
    with concurrent.futures.ThreadPoolExecutor(samples) as pool:  # the branches run as one batch
        replies = pool.map(lambda text: _generate(url, text, max_tokens), case.openings)
        solutions = [reply["text"] for reply, _ in replies]
    prompt = gather_prompt(case.prefix, solutions, chat_template=template)
    row: dict[str, Any] = {"index": problem.index, "gold": problem.answer}
    for mode in MODES:
        options = {Option.PACKETS: prompt.packets, **OPTIONS[mode]} if mode in OPTIONS else None
        reply, ttft = _generate(url, prompt.text, answer_tokens, options)
        meta = reply["meta_info"]
        info = meta_entry(meta, Meta.PACKETS) or {}
        row[mode] = {
            "ttft_s": ttft,
            "prompt_tokens": meta["prompt_tokens"],
            "cached_tokens": meta["cached_tokens"],
            "tokens_not_computed": info.get("tokens_not_computed", 0),
            "soft_tokens": info.get("soft_tokens", 0),
            "computed": meta["prompt_tokens"] - meta["cached_tokens"] - info.get("tokens_not_computed", 0),
            "prediction": gsm8k.extract_answer(reply["text"]),
            "text": reply["text"],
        }
    return row


def recovery(plain: float, adapter: float) -> float | None:
    """The share of plain reuse's shortfall against the full computation (agreement 1) that the adapter
    recovers; None when plain reuse fell short of nothing."""
    return None if plain >= 1 else (adapter - plain) / (1 - plain)


def summarize(rows: list[dict[str, Any]], cost: CostModel | None = None) -> dict[str, Any]:
    """Per mode: tokens computed, TTFT, accuracy, agreement with the full computation; and, costed with the
    GPU model (`cost`, default: the shipped H100 table), each mode's prefill per gather beside one decode step."""
    cost = cost or cost_model.load()
    out: dict[str, Any] = {"problems": len(rows)}
    n = len(rows)
    for mode in MODES:
        out[mode] = {
            "prompt_tokens": sum(r[mode]["prompt_tokens"] for r in rows),
            "computed": sum(r[mode]["computed"] for r in rows),
            "ttft_median_s": statistics.median(r[mode]["ttft_s"] for r in rows),
            "ttft_total_s": sum(r[mode]["ttft_s"] for r in rows),
            "accuracy": sum(r[mode]["prediction"] == r["gold"] for r in rows) / n,
        }
    for mode in MODES:
        if mode != "full":
            out[mode]["answer_agreement"] = sum(r[mode]["prediction"] == r["full"]["prediction"] for r in rows) / n
            out[mode]["same_text"] = sum(r[mode]["text"] == r["full"]["text"] for r in rows) / n
            out[mode]["computed_ratio"] = out["full"]["computed"] / max(1, out[mode]["computed"])
            out[mode]["ttft_ratio"] = out["full"]["ttft_total_s"] / max(1e-9, out[mode]["ttft_total_s"])
    out["gpu"] = {
        "model": cost.name,
        "decode_step_ms": cost.step_ms(1),
        **{f"{mode}_prefill_ms_per_gather": cost.prefill_ms(out[mode]["computed"] / n) for mode in MODES},
    }
    for measure in ("answer_agreement", "same_text"):
        out[f"recovery_{measure}"] = recovery(out["plain"][measure], out["adapter"][measure])
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
    parser.add_argument("--adapter", default="auto", help="the server's --rksc-packet-adapter")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    from sglang_rksc.programs.model_profiles import profile_for

    max_tokens = args.max_tokens or profile_for(args.model or "smollm2").max_tokens["self_consistency_verify"]
    problems = gsm8k.load_problems(args.start, args.num_problems)
    template = get_chat_template("chatml")  # both named models speak ChatML
    model = ["--model", args.model] if args.model else []
    with LaunchedServer([*model, "--rksc-packets", "on", "--rksc-packet-adapter", args.adapter]) as server:
        rows = [run_problem(server.url, p, template, args.samples, max_tokens, args.answer_tokens) for p in problems]
    summary = summarize(rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"command": sys.argv, "summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
