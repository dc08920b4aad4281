"""Serving many programs at once under a KV budget, mode by mode, as a provider would.

    python -m sglang_rksc.bench.serve --modes radix,rksc-full --budgets 6000,12000 --clients 8 --problems 24

For every KV budget (`--max-total-tokens`) and every mode, a fresh server of the
same build runs the same jobs: a fixed, seeded sequence of problems from a mix of
programs (tree-of-thought, self-consistency with verification, Game of 24),
greedy by default so that answers can be compared across modes.
- closed loop (`--clients N`): N clients, each starting its next job when its
  last one ends;
- open loop (`--rate R`): jobs arrive as a Poisson process of R per minute (the
  same arrival times in every mode), each running as soon as it arrives.

Per run it reports problems per minute, generated tokens per second, p50/p95 job
latency, the KV held by running requests (mean and peak, sampled at every
forward), tokens evicted, prompt tokens computed and those recomputed beyond the
largest budget, requests waiting for memory (mean and peak queue) and
retractions, decode steps with their batch sizes, accuracy and agreement with
`radix` under the same budget; and beside the CPU wall time, the GPU projection
of the same token accounting (`sglang_rksc.runtime.cost_model`: a projection, not
a GPU run). Writes serve.json, serve.md and serve.png under --output-dir, and journal.jsonl as jobs
finish: `--resume` continues a killed run with the jobs it lacks (its time then spans several servers,
so its rates are those of a resumed run; its answers are whole).

With `--replicas N` (N > 1) each run is a cluster instead of one server: N replicas behind SGLang's router
(`sglang_rksc.cluster`), once per routing policy in `--policies`; the budget is each replica's. The report then
adds, per replica and in total, the jobs each replica mostly served, its counters and its GPU projection, and
the share of a job's requests that landed on its main replica.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sglang_rksc.bench import cluster_stats, server_stats
from sglang_rksc.bench import modes as modes_mod
from sglang_rksc.bench.compare import server_log_path
from sglang_rksc.bench.journal import FILE_NAME, Journal, JournalError, Segment
from sglang_rksc.bench.report import drafts_acceptance, drafts_figures, drafts_tokens_per_step, fmt
from sglang_rksc.cluster.cluster import POLICIES, LaunchedCluster
from sglang_rksc.programs import common, game_of_24, self_consistency_verify, tree_of_thought
from sglang_rksc.runtime import cost_model
from sglang_rksc.runtime.server_process import LaunchedServer, ServerStartError, exit_on_sigterm

PROGRAMS: dict[str, Any] = {p.NAME: p for p in (tree_of_thought, self_consistency_verify, game_of_24)}
DEFAULT_MIX = "tree_of_thought:2,self_consistency_verify:1,game_of_24:1"
# Where each program's problems start: GSM8K's reporting slice (300+). The Game of 24 data holds ranks
# 1-899 only, all of them the calibration ranks: its figures here are not a held-out report.
REPORTING_START = {tree_of_thought.NAME: 300, self_consistency_verify.NAME: 300, game_of_24.NAME: 0}
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Job:
    index: int
    program: str
    problem: Any
    arrival_s: float = 0.0  # open loop: when it arrives, from the start of the run


@dataclass
class Done:
    index: int
    program: str
    queued_s: float  # when it could start (arrival, or when its client was free)
    started_s: float
    finished_s: float
    row: dict[str, Any] | None
    error: str | None = None


@dataclass
class ServeRun:
    mode: str
    budget: int
    seconds: float
    done: list[Done]
    server: dict[str, float]
    log_path: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    policy: str | None = None  # a cluster's routing policy (None: one server)

    @property
    def label(self) -> str:
        """The run's key in the journal: mode and budget, and the policy of a cluster."""
        return run_key(self.mode, self.budget, self.policy)


def run_key(mode: str, budget: int, policy: str | None) -> str:
    return f"{mode}@{budget}" + (f"/{policy}" if policy else "")


def parse_mix(text: str) -> dict[str, int]:
    """`tree_of_thought:2,game_of_24:1` -> weights; ValueError on an unknown program or a bad weight."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        if name not in PROGRAMS:
            raise ValueError(f"unknown program {name!r} in --mix (known: {', '.join(sorted(PROGRAMS))})")
        try:
            mix[name] = int(weight or 1)
        except ValueError:
            raise ValueError(f"--mix weight of {name} must be an integer, got {weight!r}") from None
        if mix[name] < 1:
            raise ValueError(f"--mix weight of {name} must be at least 1")
    return mix


def build_jobs(mix: dict[str, int], count: int, seed: int, rate_per_min: float | None) -> list[Job]:
    """`count` jobs in a seeded order drawn by the mix's weights; each program's problems taken in order
    from its reporting slice; open loop: seeded Poisson arrival times."""
    rng = random.Random(seed)
    names = list(mix)
    order = rng.choices(names, weights=[mix[n] for n in names], k=count)
    needed = {n: order.count(n) for n in names}
    problems = {n: list(PROGRAMS[n].load_problems(REPORTING_START[n], needed[n])) if needed[n] else [] for n in names}
    taken = dict.fromkeys(names, 0)
    jobs, clock = [], 0.0
    for i, name in enumerate(order):
        if rate_per_min:
            clock += rng.expovariate(rate_per_min / 60.0)
        jobs.append(Job(i, name, problems[name][taken[name]], clock if rate_per_min else 0.0))
        taken[name] += 1
    return jobs


def _option_groups(flags: Sequence[str]) -> list[list[str]]:
    """Each option with its values: `--diversify` alone, `--verifier cgee` together (flags are not pairs)."""
    groups: list[list[str]] = []
    for token in flags:
        if token.startswith("--") or not groups:
            groups.append([token])
        else:
            groups[-1].append(token)
    return groups


def program_flags(program: Any, flags: Sequence[str]) -> list[str]:
    """The options that this program has, each with its values: a mode's `--verifier` means nothing to
    Game of 24, which still gets the rest. An option the program has but whose value it refuses is an
    error (ValueError), as in `bench.compare`, not a silent drop."""
    known = common.program_parser(program, with_run_args=False)._option_string_actions
    kept = []
    for group in _option_groups(flags):
        if group[0].split("=", 1)[0] not in known:
            continue
        try:
            common.program_options(program, group)
        except ValueError as exc:
            raise ValueError(f"{program.NAME}: {' '.join(group)}: {exc}") from None
        kept += group
    return kept


def run_jobs(
    run_one: Callable[[Job], dict[str, Any]],
    jobs: Sequence[Job],
    clients: int | None,
    progress: Any = None,
    on_done: Callable[[Done], None] | None = None,
) -> list[Done]:
    """Closed loop with `clients` workers, or (None) open loop: each job at its arrival time. `on_done` sees
    each finished job at once (under a lock)."""
    t0 = time.perf_counter()
    done: list[Done] = []
    lock = threading.Lock()

    def execute(job: Job, queued: float) -> None:
        started = time.perf_counter() - t0
        row, error = None, None
        try:
            row = run_one(job)
        except Exception as exc:  # a failed job is reported, not fatal to the run
            error = f"{type(exc).__name__}: {exc}"
        with lock:
            done.append(Done(job.index, job.program, queued, started, time.perf_counter() - t0, row, error))
            if on_done is not None:
                on_done(done[-1])
            if progress is not None:
                progress.update(1)

    if clients is not None:
        queue = list(jobs)

        def client() -> None:
            while True:
                with lock:
                    if not queue:
                        return
                    job = queue.pop(0)
                execute(job, time.perf_counter() - t0)

        threads = [threading.Thread(target=client) for _ in range(clients)]
    else:

        def arrive(job: Job) -> None:
            time.sleep(max(0.0, job.arrival_s - (time.perf_counter() - t0)))
            execute(job, job.arrival_s)

        threads = [threading.Thread(target=arrive, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(done, key=lambda d: d.index)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def batch_histogram(steps_by_batch: dict[int, float]) -> dict[str, int]:
    """Decode steps by batch size, in buckets 1, 2-3, 4-7, ... (the last open-ended)."""
    out: dict[str, int] = {}
    edges = [*BATCH_BUCKETS, None]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        label = f"{lo}" if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi else f"{lo}+")
        out[label] = int(sum(n for b, n in steps_by_batch.items() if b >= lo and (hi is None or b < hi)))
    return out


def figures(run: ServeRun, model: cost_model.CostModel) -> dict[str, Any]:
    """Everything the tables report about one run, from its jobs and the server's counters."""
    s = run.server
    ok = [d for d in run.done if d.row is not None]
    latencies = [d.finished_s - d.queued_s for d in ok]
    steps_by_batch = server_stats.decode_steps_by_batch(s)
    # Every decode step at its rows and tokens per row (drafts' verify steps at theirs, the others at one).
    projection = model.project_shapes(server_stats.decode_step_shapes(s), s.get("prefill_tokens", 0.0))
    forwards = s.get("forwards_sampled", 0.0)
    return {
        "jobs": len(run.done),
        "completed": len(ok),
        "failed": len(run.done) - len(ok),
        "seconds": run.seconds,
        "problems_per_min": 60.0 * len(ok) / run.seconds if run.seconds else None,
        "generated_tokens_per_s": s.get("generated_tokens", 0.0) / run.seconds if run.seconds else None,
        "latency_p50_s": _percentile(latencies, 0.5),
        "latency_p95_s": _percentile(latencies, 0.95),
        "kv_in_use_mean": s.get("kv_in_use_sum", 0.0) / forwards if forwards else None,
        "kv_in_use_peak": s.get("kv_in_use_max"),
        "kv_mb_in_use_mean": s.get("kv_bytes_in_use_sum", 0.0) / forwards / 2**20 if forwards else None,
        "kv_mb_in_use_peak": s["kv_bytes_in_use_max"] / 2**20 if "kv_bytes_in_use_max" in s else None,
        "running_mean": s.get("running_sum", 0.0) / forwards if forwards else None,
        "running_peak": s.get("running_max"),
        "evicted_tokens": s.get("evicted_tokens", 0.0),
        "prompt_tokens_computed": s.get("prefill_tokens", 0.0),
        "waiting_mean": s.get("waiting_sum", 0.0) / forwards if forwards else None,
        "waiting_peak": s.get("waiting_max"),
        "retractions": s.get("retracted_requests", 0.0),
        "window_deferrals": s.get("heads_admissions_deferred"),  # head compression: admissions short of windows
        "decode_steps": s.get("decode_steps", 0.0),
        "mean_decode_batch": s.get("decode_rows", 0.0) / s["decode_steps"] if s.get("decode_steps") else None,
        "decode_batch_histogram": batch_histogram(steps_by_batch),
        "generated_tokens": s.get("generated_tokens", 0.0),
        **drafts_figures([s]),
        "accuracy": sum(bool(d.row["correct"]) for d in ok) / len(ok) if ok else None,
        **projection,
        "projected_problems_per_min": 60.0 * len(ok) / projection["projected_s"] if projection["projected_s"] else None,
    }


def cluster_figures(run: ServeRun, model: cost_model.CostModel) -> dict[str, Any]:
    """A cluster run's own figures: each replica's (its counters, the jobs it mostly served, its GPU projection),
    where the jobs' requests landed, and the projection of the whole (the replicas run at once: the slowest
    one's time; and summed, the GPU time spent)."""
    per_replica = cluster_stats.replica_counters(run.server)
    if not per_replica:
        return {}
    rows = [d.row for d in run.done if d.row is not None]
    where = cluster_stats.placement(rows, len(per_replica))
    replicas = []
    for i, counters in enumerate(per_replica):
        one = figures(ServeRun(run.mode, run.budget, run.seconds, [], counters), model)
        jobs = where["jobs_by_main_replica"][i]
        replicas.append(
            {
                "jobs_mostly_served": jobs,
                "problems_per_min": 60.0 * jobs / run.seconds if run.seconds else None,
                "projected_problems_per_min": 60.0 * jobs / one["projected_s"] if one["projected_s"] else None,
                **{k: one[k] for k in ("projected_s", "decode_steps", "prompt_tokens_computed", "generated_tokens")},
                "cache_hit_share": counters["cached_tokens"] / counters["prompt_tokens"]
                if counters.get("prompt_tokens")
                else None,
                "semantic_forks": counters.get("semantic_hits"),
                "reused_requests": sum(counters.get(k, 0.0) for k in ("replayed", "coalesced")),
            }
        )
    slowest = max(r["projected_s"] for r in replicas)
    completed = len(rows)
    return {
        "replicas": replicas,
        **where,
        "projected_s_summed": sum(r["projected_s"] for r in replicas),
        "projected_s": slowest,
        "projected_problems_per_min": 60.0 * completed / slowest if slowest else None,
        "cache_hit_share": run.server["cached_tokens"] / run.server["prompt_tokens"]
        if run.server.get("prompt_tokens")
        else None,
    }


def add_comparisons(runs: list[ServeRun]) -> None:
    """Agreement with radix and ratios against it under the same budget; recomputation beyond the
    largest budget, mode by mode."""
    largest = max((r.budget for r in runs), default=0)
    for run in runs:
        ref = next(
            (r for r in runs if r.mode == modes_mod.REFERENCE and r.budget == run.budget and r.policy == run.policy),
            None,
        )
        roomy = next((r for r in runs if r.mode == run.mode and r.budget == largest and r.policy == run.policy), None)
        f = run.figures
        if roomy is not None:
            f["prompt_tokens_recomputed"] = max(
                0.0, f["prompt_tokens_computed"] - roomy.figures["prompt_tokens_computed"]
            )
        if ref is None:
            continue
        answers = {d.index: d.row.get("prediction") for d in ref.done if d.row is not None}
        same = [
            d.row.get("prediction") == answers[d.index] for d in run.done if d.row is not None and d.index in answers
        ]
        f["agreement_with_radix"] = sum(same) / len(same) if same else None
        for key in ("problems_per_min", "projected_problems_per_min", "decode_steps"):
            if f.get(key) and ref.figures.get(key):
                f[f"{key}_vs_radix"] = f[key] / ref.figures[key]


COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = []


def _ratio(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


COLUMNS = [
    ("budget (tokens)", lambda f: fmt(f["budget"], 0)),
    ("mode", lambda f: f["mode"]),
    ("routing", lambda f: f.get("policy") or "one server"),
    (
        "requests on the main replica (jobs >= 90%)",
        lambda f: f"{fmt(f.get('one_replica_share_mean'), 2)} ({fmt(f.get('jobs_on_one_replica'), 2)})",
    ),
    ("cache hits", lambda f: fmt(f.get("cache_hit_share"), 2)),
    ("problems/min", lambda f: fmt(f["problems_per_min"], 2)),
    ("vs radix", lambda f: _ratio(f.get("problems_per_min_vs_radix"))),
    ("GPU-projected problems/min", lambda f: fmt(f["projected_problems_per_min"], 1)),
    ("projected vs radix", lambda f: _ratio(f.get("projected_problems_per_min_vs_radix"))),
    ("gen tok/s", lambda f: fmt(f["generated_tokens_per_s"])),
    ("latency p50 / p95 s", lambda f: f"{fmt(f['latency_p50_s'])} / {fmt(f['latency_p95_s'])}"),
    ("KV in use mean / peak", lambda f: f"{fmt(f['kv_in_use_mean'], 0)} / {fmt(f['kv_in_use_peak'], 0)}"),
    (
        "KV MiB in use mean / peak",
        lambda f: f"{fmt(f.get('kv_mb_in_use_mean'), 1)} / {fmt(f.get('kv_mb_in_use_peak'), 1)}",
    ),
    ("in flight mean / peak", lambda f: f"{fmt(f.get('running_mean'))} / {fmt(f.get('running_peak'), 0)}"),
    ("evicted tokens", lambda f: fmt(f["evicted_tokens"], 0)),
    (
        "prompt computed (recomputed)",
        lambda f: f"{fmt(f['prompt_tokens_computed'], 0)} ({fmt(f.get('prompt_tokens_recomputed'), 0)})",
    ),
    ("waiting mean / peak", lambda f: f"{fmt(f['waiting_mean'])} / {fmt(f['waiting_peak'], 0)}"),
    ("retractions", lambda f: fmt(f["retractions"], 0)),
    ("window deferrals", lambda f: fmt(f.get("window_deferrals"), 0)),
    ("decode steps (mean batch)", lambda f: f"{fmt(f['decode_steps'], 0)} ({fmt(f['mean_decode_batch'])})"),
    ("decode steps vs radix", lambda f: _ratio(f.get("decode_steps_vs_radix"))),
    ("drafts: tok/step (accepted/drafted row)", drafts_tokens_per_step),
    ("accepted by source", drafts_acceptance),
    ("batch histogram", lambda f: " ".join(f"{k}:{v}" for k, v in f["decode_batch_histogram"].items() if v)),
    ("accuracy", lambda f: fmt(f["accuracy"], 2)),
    ("agreement w/ radix", lambda f: fmt(f.get("agreement_with_radix"), 2)),
    ("done / failed", lambda f: f"{f['completed']} / {f['failed']}"),
]


REPLICA_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("jobs mostly served", lambda r: fmt(r["jobs_mostly_served"], 0)),
    ("problems/min", lambda r: fmt(r["problems_per_min"], 2)),
    ("GPU-projected problems/min", lambda r: fmt(r["projected_problems_per_min"], 1)),
    ("projected GPU s", lambda r: fmt(r["projected_s"], 2)),
    ("cache hits", lambda r: fmt(r["cache_hit_share"], 2)),
    ("semantic forks", lambda r: fmt(r["semantic_forks"], 0)),
    ("replayed + coalesced", lambda r: fmt(r["reused_requests"], 0)),
    ("decode steps", lambda r: fmt(r["decode_steps"], 0)),
    ("prompt computed", lambda r: fmt(r["prompt_tokens_computed"], 0)),
]


def replica_table(runs: Sequence[ServeRun]) -> str:
    """Per replica of each cluster run, then the projection of the whole: the slowest replica's GPU time (they
    run at once) and the sum (the GPU time spent). Empty without a cluster run."""
    head = "| mode | budget | routing | replica | " + " | ".join(name for name, _ in REPLICA_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (4 + len(REPLICA_COLUMNS))]
    for run in runs:
        f = run.figures
        for i, replica in enumerate(f.get("replicas") or []):
            cells = " | ".join(cell(replica) for _, cell in REPLICA_COLUMNS)
            lines.append(f"| {run.mode} | {run.budget:,} | {run.policy} | {i} | {cells} |")
        if f.get("replicas"):
            lines.append(
                f"| {run.mode} | {run.budget:,} | {run.policy} | all | {fmt(f['completed'], 0)} | "
                f"{fmt(f['problems_per_min'], 2)} | {fmt(f['projected_problems_per_min'], 1)} | "
                f"{fmt(f['projected_s'], 2)} (summed {fmt(f['projected_s_summed'], 2)}) | "
                f"{fmt(f['cache_hit_share'], 2)} | {fmt(run.server.get('semantic_hits'), 0)} | "
                f"{fmt(sum(run.server.get(k, 0.0) for k in ('replayed', 'coalesced')), 0)} | "
                f"{fmt(f['decode_steps'], 0)} | {fmt(f['prompt_tokens_computed'], 0)} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown_table(runs: Sequence[ServeRun]) -> str:
    rows = [{**r.figures, "mode": r.mode, "budget": r.budget, "policy": r.policy} for r in runs]
    head = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(cell(f) for _, cell in COLUMNS) + " |" for f in rows]
    return "\n".join([head, rule, *body])


def write_chart(runs: Sequence[ServeRun], path: Path, heading: str) -> None:
    """Problems per minute against the KV budget, per mode: CPU wall time and the GPU projection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in (
        (axes[0], "problems_per_min", "CPU wall time (this machine)"),
        (axes[1], "projected_problems_per_min", "GPU projection of the same tokens (cost model)"),
    ):
        for mode in dict.fromkeys(r.mode for r in runs):
            for policy in dict.fromkeys(r.policy for r in runs):
                points = sorted(
                    (r.budget, r.figures.get(key))
                    for r in runs
                    if r.mode == mode and r.policy == policy and r.figures.get(key)
                )
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=f"{mode} {policy or ''}".strip())
        ax.set_xlabel("KV budget (--max-total-tokens)")
        ax.set_ylabel("problems per minute")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("\n".join(textwrap_lines(heading)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def textwrap_lines(text: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, 140)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.bench.serve",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--modes", default="radix,rksc-full", help=f"comma-separated modes, from: {', '.join(modes_mod.MODES)}"
    )
    parser.add_argument(
        "--budgets", default="8192", help="comma-separated KV budgets (--max-total-tokens), one curve point each"
    )
    parser.add_argument("--mix", default=DEFAULT_MIX, help="programs and their weights in the job sequence")
    parser.add_argument("--problems", type=common.positive_int, default=24, help="jobs (program instances) per run")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--clients", type=common.positive_int, default=8, help="closed loop: concurrent clients")
    load.add_argument("--rate", type=float, help="open loop: Poisson arrivals, jobs per minute (instead of --clients)")
    parser.add_argument("--seed", type=int, default=0, help="job order and arrival times (the same in every mode)")
    parser.add_argument("--temperature", type=common.temperature, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument(
        "--program-args",
        default="--diversify",
        help="flags given to every program that has them, as one quoted string after an equals sign",
    )
    parser.add_argument("--server-args", default="", help="extra flags for every server")
    parser.add_argument(
        "--replicas",
        type=common.positive_int,
        default=1,
        help="servers per run: above 1, that many replicas behind SGLang's router (the budget is each one's)",
    )
    parser.add_argument(
        "--policies",
        default="cache_aware",
        help=f"with --replicas above 1: comma-separated routing policies, a run each, from: {', '.join(POLICIES)}",
    )
    parser.add_argument("--model", help="a named embedded model for every server (default: smollm2-135m)")
    parser.add_argument("--cost-model", help="GPU cost model JSON (gpu_costmodel.py's output); default: H100 / 7B")
    parser.add_argument("--chat-template", default="auto", help="SGLang frontend chat template ('auto': see programs)")
    parser.add_argument("--output-dir", default="results/serve", help="where serve.json, serve.md, serve.png go")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run whose journal.jsonl is in --output-dir (the same settings; it may add modes, "
        "or leave recorded ones out, whose rows stay): "
        "only the jobs it has not recorded run",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="with --resume: run nothing, write the report of what the journal holds (a mode whose jobs are not "
        "all recorded is left out of it), for a run filled in across sessions",
    )
    return parser


def options_for(program: Any, args: argparse.Namespace, mode: modes_mod.Mode) -> argparse.Namespace:
    flags = program_flags(program, [*shlex.split(args.program_args), *mode.program_args])
    options = common.program_options(program, flags)
    if hasattr(options, "temperature"):
        options.temperature = args.temperature
    return options


class BudgetTooSmall(RuntimeError):
    """No job could run under the KV budget: reported as one line."""


def run_one_config(
    mode: modes_mod.Mode,
    budget: int,
    jobs: list[Job],
    args: argparse.Namespace,
    out: Path,
    *,
    env: dict[str, str] | None = None,
    before_stop: Callable[[LaunchedServer], None] | None = None,
    segment: Segment | None = None,
    policy: str | None = None,
) -> ServeRun:
    """A fresh server for this mode and budget, the jobs, and the server's counters during them
    (`before_stop` sees the server once the jobs are done; tests check its memory there). With a journal
    `segment`, every finished job is recorded there with the time and counters so far."""
    server_args = [
        *mode.server_args,
        *(["--model", args.model] if args.model else []),
        "--enable-metrics",
        "--max-total-tokens",
        str(budget),
        *shlex.split(args.server_args),
    ]
    log = server_log_path(out, mode.name, budget)  # a cluster's logs: a folder named after the run
    if policy is not None:
        log = log.with_name(f"cluster-{run_key(mode.name, budget, policy).replace('/', '_')}")
    options = {name: options_for(program, args, mode) for name, program in PROGRAMS.items()}
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        progress = tqdm(total=len(jobs), desc=f"{mode.name} @ {budget}", unit="job", file=sys.stderr)
    if policy is None:
        serving: LaunchedServer | LaunchedCluster = LaunchedServer(server_args, log_path=log, env=env)
    else:
        serving = LaunchedCluster(args.replicas, policy=policy, server_args=server_args, log_dir=log, env=env)
    with serving as server:
        backend = common.make_backend(server.url, args.chat_template)
        stats_urls = [server.url] if policy is None else serving.replica_urls
        ports = [] if policy is None else [int(u.rpartition(":")[2]) for u in stats_urls]

        def snapshot() -> dict[str, float]:
            return server_stats.snapshot(stats_urls[0]) if policy is None else cluster_stats.snapshot(stats_urls)

        def since(before: dict[str, float], started: float) -> tuple[float, dict[str, float]]:
            return time.perf_counter() - started, server_stats.difference(snapshot(), before)

        def run_one(job: Job) -> dict[str, Any]:
            program = PROGRAMS[job.program]
            (row,) = program.run(backend, [job.problem], options[job.program], parallel=1, progress_bar=False)
            return {**row, "replica_ports": ports} if ports else row  # which replica is which, in this run

        before = snapshot()
        started = time.perf_counter()

        def record(job: Done) -> None:
            if segment is not None:
                segment.row(job.index, asdict(job), *since(before, started))

        done = run_jobs(run_one, jobs, None if args.rate else args.clients, progress, on_done=record)
        seconds, counters = since(before, started)
        if segment is not None:
            segment.end(seconds, counters)
        if before_stop is not None:
            before_stop(server)
    if progress is not None:
        progress.close()
    if done and not any(d.row is not None for d in done):
        raise BudgetTooSmall(
            f"no job ran at --max-total-tokens {budget} under mode {mode.name}: the budget is too small to admit "
            f"one request? First error: {done[0].error}"
        )
    return ServeRun(mode.name, budget, seconds, done, counters, str(log), policy=policy)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        modes = modes_mod.resolve([m.strip() for m in args.modes.split(",") if m.strip()])
        budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
        if not budgets or min(budgets) < 1:
            raise ValueError("--budgets must be positive token counts")
        mix = parse_mix(args.mix)
        if args.rate is not None and not args.rate > 0:
            raise ValueError("--rate must be positive (jobs per minute)")
        model = cost_model.load(args.cost_model)
        jobs = build_jobs(mix, args.problems, args.seed, args.rate)
        for mode in modes:
            for program in PROGRAMS.values():
                options_for(program, args, mode)
        policies: list[str | None] = [None]
        if args.replicas > 1:
            policies = [p.strip() for p in args.policies.split(",") if p.strip()]
            unknown = [p for p in policies if p not in POLICIES]
            if unknown or not policies:
                raise ValueError(f"--policies: {', '.join(unknown) or 'none given'}; known: {', '.join(POLICIES)}")
        if args.report_only and not args.resume:
            raise ValueError("--report-only reports a journal: give it with --resume")
    except (ValueError, cost_model.CostModelError) as exc:
        parser.error(str(exc))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        journal = Journal(out / FILE_NAME, journal_config(args, modes, budgets, policies), resume=args.resume)
    except JournalError as exc:
        parser.error(str(exc))
    runs: list[ServeRun] = []
    configs = [(budget, mode, policy) for budget in budgets for mode in modes for policy in policies]
    for position, (budget, mode, policy) in enumerate(configs, 1):
        key = run_key(mode.name, budget, policy)
        recorded = journal.done(key)
        todo = [job for job in jobs if job.index not in recorded]
        print(
            f"[{position}/{len(configs)}] budget {budget}, mode {mode.name}"
            + (f", {args.replicas} replicas routed {policy}" if policy else "")
            + (f": {len(todo)} of {len(jobs)} jobs left" if len(todo) < len(jobs) else ""),
            file=sys.stderr,
        )
        if todo and args.report_only:
            print(f"  {len(jobs) - len(todo)} of {len(jobs)} jobs recorded: left out of the report", file=sys.stderr)
            continue
        try:
            if todo:
                run_one_config(mode, budget, todo, args, out, segment=journal.segment(key), policy=policy)
        except ServerStartError as exc:
            print(f"error: mode {mode.name} at budget {budget}: {exc}", file=sys.stderr)
            return 1
        except BudgetTooSmall as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        totals = journal.totals(key)
        done = [Done(**totals.rows[job.index]) for job in jobs if job.index in totals.rows]
        run = ServeRun(
            mode.name,
            budget,
            totals.seconds,
            done,
            totals.server,
            str(server_log_path(out, mode.name, budget)),
            policy=policy,
        )
        run.figures = {**figures(run, model), **cluster_figures(run, model), "server_segments": totals.segments}
        runs.append(run)
    add_comparisons(runs)
    command = "python -m sglang_rksc.bench.serve " + shlex.join(argv if argv is not None else sys.argv[1:])
    load_text = f"open loop at {args.rate} jobs/min" if args.rate else f"closed loop with {args.clients} clients"
    heading = (
        f"{args.problems} jobs ({args.mix}), {load_text}, seed {args.seed}, temperature {args.temperature}, "
        f"program flags {args.program_args!r}; GPU projection: {model.source}"
    )
    write_report(out, command, heading, runs, model)
    return 0


def journal_config(
    args: argparse.Namespace, modes: list[modes_mod.Mode], budgets: list[int], policies: Sequence[str | None] = (None,)
) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (not --resume, --output-dir, --quiet, --cost-model)."""
    kept = ("mix", "problems", "clients", "rate", "seed", "temperature", "program_args", "server_args", "model")
    config = {
        **{k: getattr(args, k) for k in kept},
        "chat_template": args.chat_template,
        "modes": [(m.name, list(m.server_args), list(m.program_args)) for m in modes],
        "budgets": budgets,
    }
    if args.replicas > 1:  # one server's journals stay as they were
        config.update(replicas=args.replicas, policies=list(policies))
    return config


def write_report(out: Path, command: str, heading: str, runs: list[ServeRun], model: cost_model.CostModel) -> None:
    markdown = f"`{command}`\n\n{heading}\n\n{markdown_table(runs)}\n"
    replicas = replica_table(runs)
    if replicas:
        markdown += f"\nPer replica (jobs by the replica that ran most of their requests):\n\n{replicas}\n"
    (out / "serve.md").write_text(markdown)
    record = {"command": command, "heading": heading, "cost_model": model.name, "runs": [asdict(r) for r in runs]}
    (out / "serve.json").write_text(json.dumps(record, indent=1, default=str))
    if runs:
        write_chart(runs, out / "serve.png", heading)
    print(markdown)
    print(f"wrote {out / 'serve.md'}, {out / 'serve.json'}" + (f", {out / 'serve.png'}" if runs else ""))


if __name__ == "__main__":
    exit_on_sigterm()  # a killed run stops its server and can be resumed
    sys.exit(main())
