"""Decode throughput of the sglang-rksc server on this machine, beside transformers' `generate`.

Both sides run the same model (the converted default, bf16), the same 8 GSM8K
prompts (problems 300-307), greedy, exactly --max-new-tokens tokens each
(EOS ignored), with 1 request at a time and with 8 at once. Measurements are
interleaved and repeated in one run, so machine noise shows as a spread.

    python -m sglang_rksc.bench.decode_throughput --repeats 3

Writes results/decode_throughput.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

from sglang_rksc.bench import server_stats
from sglang_rksc.programs import gsm8k
from sglang_rksc.programs.common import positive_int
from sglang_rksc.runtime import cost_model, models
from sglang_rksc.runtime.server_process import LaunchedServer

NUM_PROMPTS = 8


def build_prompts() -> list[str]:
    return [f"Question: {p.question}\nAnswer:" for p in gsm8k.load_problems(300, NUM_PROMPTS)]


class HFRunner:
    """transformers' generate on the same folder, greedy, fixed output length."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()

    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        out = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return out[:, batch.input_ids.shape[1] :].tolist()


def server_generate(url: str, prompt: str, max_new_tokens: int) -> list[int]:
    resp = requests.post(
        url + "/generate",
        json={
            "text": prompt,
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True},
        },
        timeout=600,
    )
    resp.raise_for_status()
    return resp.json()["output_ids"]


def flush(url: str) -> None:
    # The scheduler may still be finishing the last batch: retry briefly.
    for _ in range(20):
        if requests.post(url + "/flush_cache", timeout=30).status_code == 200:
            return
        time.sleep(0.5)
    raise RuntimeError("the server refused /flush_cache")


def timed(fn) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    outputs = fn()
    return time.perf_counter() - started, outputs


def measure(args: argparse.Namespace, url: str, hf: HFRunner, prompts: list[str], model: cost_model.CostModel) -> dict:
    n = args.max_new_tokens
    runs: dict[str, list[float]] = {k: [] for k in ("server c=1", "transformers c=1", "server c=8", "transformers c=8")}
    projected: dict[str, list[float]] = {"server c=1": [], "server c=8": []}
    outputs: dict[str, list[list[int]]] = {}
    with ThreadPoolExecutor(NUM_PROMPTS) as pool:
        cases = {
            "server c=1": lambda: [server_generate(url, p, n) for p in prompts],
            "transformers c=1": lambda: [hf.generate([p], n)[0] for p in prompts],
            "server c=8": lambda: list(pool.map(lambda p: server_generate(url, p, n), prompts)),
            "transformers c=8": lambda: hf.generate(prompts, n),
        }
        for repeat in range(args.repeats):
            for name, fn in cases.items():  # interleaved, so drift hits every case alike
                if name.startswith("server"):
                    flush(url)
                    before = server_stats.snapshot(url)
                seconds, out = timed(fn)
                if name.startswith("server"):
                    # The same decode steps and prefill, costed on the GPU model: a projection.
                    done = server_stats.difference(server_stats.snapshot(url), before)
                    shapes = server_stats.decode_step_shapes(done)  # drafts steps at their widths
                    price = model.project_shapes(shapes, done.get("prefill_tokens", 0.0))
                    projected[name].append(len(prompts) * n / price["projected_s"])
                assert all(len(o) == n for o in out), f"{name}: not every request produced {n} tokens"
                runs[name].append(len(prompts) * n / seconds)
                outputs.setdefault(name, out)
                print(f"repeat {repeat + 1}/{args.repeats} {name}: {runs[name][-1]:.1f} tok/s", file=sys.stderr)
    same = [a == b for a, b in zip(outputs["server c=1"], outputs["transformers c=1"], strict=True)]
    prefix = [
        next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), n)
        for a, b in zip(outputs["server c=1"], outputs["transformers c=1"], strict=True)
    ]
    return {
        "tok_per_s": {
            k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v} for k, v in runs.items()
        },
        "projected_gpu_tok_per_s": {k: statistics.median(v) for k, v in projected.items() if v},
        "cost_model": model.source,
        "greedy_agreement": {
            "identical_outputs": sum(same),
            "prompts": len(same),
            "mean_common_prefix_tokens": statistics.mean(prefix),
        },
    }


def to_markdown(result: dict, command: str) -> str:
    tps = result["tok_per_s"]
    lines = [
        f"`{command}` ({result['repeats']} interleaved repeats, {result['max_new_tokens']} greedy tokens per request, "
        f"{NUM_PROMPTS} GSM8K prompts; tokens/s = generated tokens / wall time)",
        "",
        "| concurrency | sglang-rksc server tok/s (median, min-max) | transformers generate tok/s "
        "| server / transformers |",
        "|---|---|---|---|",
    ]
    for c in (1, 8):
        s, h = tps[f"server c={c}"], tps[f"transformers c={c}"]
        lines.append(
            f"| {c} | {s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f}) "
            f"| {h['median']:.1f} ({h['min']:.1f}-{h['max']:.1f}) | {s['median'] / h['median']:.2f}x |"
        )
    gpu = result.get("projected_gpu_tok_per_s") or {}
    if gpu:
        one, eight = gpu["server c=1"], gpu["server c=8"]
        cpu_gain = tps["server c=8"]["median"] / tps["server c=1"]["median"]
        lines += [
            "",
            f"The same runs' token accounting costed on the GPU cost model ({result['cost_model']}; a projection, "
            f"not a GPU run): {one:.0f} tok/s at concurrency 1, {eight:.0f} at 8 ({eight / one:.1f}x, against "
            f"{cpu_gain:.1f}x on this CPU).",
        ]
    agree = result["greedy_agreement"]
    lines += [
        "",
        f"Greedy outputs identical to transformers': {agree['identical_outputs']}/{agree['prompts']} prompts "
        f"(mean common prefix {agree['mean_common_prefix_tokens']:.1f} of {result['max_new_tokens']} tokens).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.bench.decode_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens per request; default 64")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved repeats of every case; default 3")
    parser.add_argument("--url", help="measure this server instead of starting the embedded one (same model expected)")
    parser.add_argument(
        "--model", default=models.DEFAULT_MODEL, choices=sorted(models.MODELS),
        help=f"the named embedded model, for the server and transformers alike; default {models.DEFAULT_MODEL}",
    )  # fmt: skip
    parser.add_argument("--output-dir", default="results", help="where the JSON and Markdown go; default results/")
    parser.add_argument(
        "--cost-model", help="GPU cost model JSON for the projection (default: H100, Qwen2.5-7B shapes)"
    )
    args = parser.parse_args(argv)
    try:
        model = cost_model.load(args.cost_model)
    except cost_model.CostModelError as exc:
        parser.error(str(exc))

    try:
        model_dir = models.prepare(args.model)
    except models.ModelPreparationError as exc:
        parser.error(str(exc))
    prompts = build_prompts()
    hf = HFRunner(model_dir)
    if args.url:
        result = measure(args, args.url.rstrip("/"), hf, prompts, model)
    else:
        with LaunchedServer(["--model-path", str(model_dir)]) as server:
            result = measure(args, server.url, hf, prompts, model)
    result.update(max_new_tokens=args.max_new_tokens, repeats=args.repeats, torch_threads=torch.get_num_threads())
    command = "python -m sglang_rksc.bench.decode_throughput" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    markdown = to_markdown(result, command)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_throughput.json").write_text(json.dumps({"command": command, **result}, indent=2))
    (out / "decode_throughput.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
