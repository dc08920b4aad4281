"""Turning the runs of a comparison into one row per mode, a Markdown table and a chart."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglang_rksc.bench.modes import REFERENCE, Mode
from sglang_rksc.bench.server_stats import (
    ACCEPTED,
    DRAFTED,
    DRAFTS,
    decode_step_shapes,
)
from sglang_rksc.runtime import cost_model as costs
from sglang_rksc.wire import EvictionStats, MarkStats, ReuseStats, SemanticStats, counter_names

# Figures later features report through the server's counters; "n/a" until a mode has them.
FEATURE_COUNTERS = counter_names(SemanticStats, "semantic_hits")
# The rksc backend's eviction totals (any policy) and RSBCM's marks.
EVICTION_COUNTERS = counter_names(
    EvictionStats, "evicted_tokens", "evicted_rejected", "evicted_finished", "evicted_open"
) + counter_names(MarkStats, "requests_marked", "tokens_marked")
REUSE_COUNTERS = counter_names(ReuseStats, "replayed", "coalesced", "verdicts_reused", "tokens_not_generated")


@dataclass
class Run:
    """One program run under one mode."""

    mode: str
    repeat: int
    seconds: float
    rows: list[dict[str, Any]]
    server: dict[str, float]  # counters during the run (after - before)
    log_path: str = ""


@dataclass
class ModeSummary:
    mode: str
    description: str
    runs: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def agreement(rows: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> float:
    """Share of problems whose final answer equals the reference run's answer for the same problem."""
    ref = {r["index"]: r["prediction"] for r in reference}
    same = [r["prediction"] == ref[r["index"]] for r in rows if r["index"] in ref]
    if len(same) != len(rows):
        raise ValueError("the reference run covers other problems")
    return sum(same) / len(same) if same else 0.0


def _self_agreement(runs: Sequence[Run]) -> float | None:
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]
    return statistics.mean(agreement(a.rows, b.rows) for a, b in pairs) if pairs else None


def verification_figures(runs: Sequence[Run]) -> dict[str, Any]:
    """From the programs' per-call verification records (rows' `verifications`), medians over runs."""
    from sglang_rksc.programs.verification import summarize

    per_run = [summarize(v for row in r.rows for v in row.get("verifications", [])) for r in runs]
    keys = (
        "verify_calls",
        "verify_skipped",
        "verify_mean_layers_run",
        "verify_num_layers",
        "verify_audited",
        "verify_disagreements",
        "verify_server_seconds",
    )
    return {k: _median([f[k] for f in per_run if f.get(k) is not None]) for k in keys}


def projected_seconds(run: Run, model: costs.CostModel) -> float | None:
    """The run's token accounting costed on the GPU model. With drafts, their verify steps are costed at their
    shapes (rows x tokens per row) and the other decode steps at one token per row. Runs recorded before the
    decode-step histogram existed are priced at their mean decode batch."""
    if "prefill_tokens" not in run.server:
        return None
    steps = decode_step_shapes(run.server)
    if not steps and run.server.get("decode_steps"):
        mean_batch = max(1, round(run.server["decode_rows"] / run.server["decode_steps"]))
        steps = {(mean_batch, 1): run.server["decode_steps"]}
    return model.project_shapes(steps, run.server["prefill_tokens"])["projected_s"]


def drafts_figures(counters: Sequence[dict[str, float]]) -> dict[str, Any]:
    """What the drafts did, from runs' counters (`server_stats`' `drafts_*`), medians over the runs that ran
    drafts; None where none did: accepted drafted tokens per drafted row, tokens emitted per row and step,
    and the share of drafted tokens accepted, by source."""
    ran = [c for c in counters if c.get(DRAFTS + "verify_steps")]

    def share(numerator: str, denominator: str, runs: Sequence[dict[str, float]]) -> float | None:
        return _median([c.get(numerator, 0.0) / c[denominator] for c in runs if c.get(denominator)])

    accepted = [{**c, "accepted_total": sum(v for k, v in c.items() if k.startswith(ACCEPTED))} for c in ran]
    sources = sorted({k[len(DRAFTED) :] for c in ran for k in c if k.startswith(DRAFTED)})
    by_source = {s: share(ACCEPTED + s, DRAFTED + s, ran) for s in sources}
    return {
        "drafts_verify_steps": _median([c[DRAFTS + "verify_steps"] for c in ran]),
        "accepted_per_verify_step": share("accepted_total", DRAFTS + "rows_drafted", accepted),
        "tokens_per_row_step": share(DRAFTS + "tokens_emitted", DRAFTS + "rows", ran),
        "acceptance_by_source": {s: v for s, v in by_source.items() if v is not None} if ran else None,
    }


def summarize_mode(
    mode: Mode, runs: Sequence[Run], reference_runs: Sequence[Run], model: costs.CostModel | None = None
) -> ModeSummary:
    summary = ModeSummary(mode.name, mode.description, len(runs))
    if not runs:
        return summary
    seconds = [r.seconds for r in runs]

    def per_run(key: str) -> list[float]:
        return [r.server[key] for r in runs if key in r.server]

    def rate(key: str) -> float | None:
        return _median([r.server[key] / r.seconds for r in runs if key in r.server])

    prompt, cached = _median(per_run("prompt_tokens")), _median(per_run("cached_tokens"))
    steps, rows = _median(per_run("decode_steps")), _median(per_run("decode_rows"))
    ref_by_repeat = {r.repeat: r for r in reference_runs}
    agreements = [agreement(r.rows, ref_by_repeat[r.repeat].rows) for r in runs if r.repeat in ref_by_repeat]
    projected = [p for p in (projected_seconds(r, model) for r in runs) if p is not None] if model else []
    summary.figures = {
        "wall_s_median": _median(seconds),
        # The same token accounting on the GPU cost model: a projection, not a GPU run.
        "projected_gpu_s": _median(projected),
        "wall_s_min": min(seconds),
        "wall_s_max": max(seconds),
        "requests": _median(per_run("requests")),
        "requests_per_s": rate("requests"),
        "generated_tokens": _median(per_run("generated_tokens")),
        "generated_tokens_per_s": rate("generated_tokens"),
        "prompt_tokens": prompt,
        "prompt_tokens_cached": cached,
        "prompt_tokens_computed": (prompt - cached) if prompt is not None and cached is not None else None,
        "prefill_tokens_forwarded": _median(per_run("prefill_tokens")),
        "decode_steps": steps,
        "mean_decode_batch": (rows / steps) if steps else None,
        **{k: _median(per_run(k)) for k in FEATURE_COUNTERS},
        "forks_alias": _median(per_run("forks_alias")),
        "forks_probe": _median(per_run("forks_probe")),
        "slots_freed_by_dedupe": _median(per_run("slots_freed")),
        "kv_tokens_held": _median(per_run("tree_tokens")),
        "cache_hit_rate": (cached / prompt) if prompt and cached is not None else None,
        **{k: _median(per_run(k)) for k in EVICTION_COUNTERS},
        **{k: _median(per_run(k)) for k in REUSE_COUNTERS},
        # Drafts (`--rksc-drafts on`): None for a mode without them.
        **drafts_figures([r.server for r in runs]),
        # Hidden-state capture for ASKS as a share of decode time (host timing; meaningful on a CPU).
        "capture_share_of_decode": _median(
            [
                r.server["capture_decode_seconds"] / r.server["decode_seconds"]
                for r in runs
                if r.server.get("decode_seconds") and "capture_decode_seconds" in r.server
            ]
        ),
        **verification_figures(runs),
        "accuracy": statistics.mean(sum(bool(x["correct"]) for x in r.rows) / len(r.rows) for r in runs),
        # The unweighted majority over the branches' answers (GSM8K programs): the baseline a weighting
        # or a merge has to beat.
        "majority_accuracy": _mean_or_none(
            [
                sum(bool(x["majority_correct"]) for x in r.rows) / len(r.rows)
                for r in runs
                if _all_have(r, "majority_correct")
            ]
        ),
        "branches_merged": _median(
            [sum(_merged(x) for x in r.rows) for r in runs if any(_merged(x) is not None for x in r.rows)]
        ),
        "agreement_with_radix": statistics.mean(agreements) if agreements else None,
        # Under sampling, how much a mode agrees with itself between repeats: the noise floor.
        "self_agreement": _self_agreement(runs),
    }
    return summary


MERGED_KEYS = ("merged_branches", "merged_samples", "merged_states")  # per program row


def _merged(row: dict[str, Any]) -> int | None:
    return next((row[k] for k in MERGED_KEYS if k in row), None)


def _all_have(run: Run, key: str) -> bool:
    return bool(run.rows) and all(key in x for x in run.rows)


def _mean_or_none(values: Sequence[float]) -> float | None:
    return statistics.mean(values) if values else None


def add_speedups(summaries: Sequence[ModeSummary]) -> None:
    """Wall-time ratios against `radix` and `no-cache` from the same comparison (>1: faster)."""
    walls = {s.mode: s.figures.get("wall_s_median") for s in summaries if s.figures}
    projected = {s.mode: s.figures.get("projected_gpu_s") for s in summaries if s.figures}
    steps = {s.mode: s.figures.get("decode_steps") for s in summaries if s.figures}
    for s in summaries:
        if not s.figures:
            continue
        for ref in (REFERENCE, "no-cache"):
            key = f"speedup_vs_{ref.replace('-', '_')}"
            s.figures[key] = walls[ref] / s.figures["wall_s_median"] if walls.get(ref) else None
        mine = s.figures.get("projected_gpu_s")
        s.figures["projected_speedup_vs_radix"] = (
            projected[REFERENCE] / mine if mine and projected.get(REFERENCE) else None
        )
        # Drafts emit several tokens a step: fewer decode steps for the same tokens (<1: fewer than radix).
        own = s.figures.get("decode_steps")
        s.figures["decode_steps_vs_radix"] = (
            own / steps[REFERENCE] if own is not None and steps.get(REFERENCE) else None
        )


def fmt(value: Any, digits: int = 1) -> str:
    """A figure for a table: thousands separated, floats to `digits` places, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _semantic(f: dict[str, Any]) -> str:
    if f["semantic_hits"] is None:
        return "n/a"
    return f"{fmt(f['semantic_hits'], 0)} ({fmt(f['forks_alias'], 0)}/{fmt(f['forks_probe'], 0)})"


def _evicted(f: dict[str, Any]) -> str:
    if f.get("evicted_tokens") is None:
        return "n/a"
    parts = "/".join(fmt(f[f"evicted_{m}"], 0) for m in ("rejected", "finished", "open"))
    return f"{fmt(f['evicted_tokens'], 0)} ({parts})"


def _reused(f: dict[str, Any]) -> str:
    if f.get("reuse_replayed") is None:
        return "n/a"
    return f"{fmt(f['reuse_replayed'], 0)} / {fmt(f['reuse_coalesced'], 0)} ({fmt(f['reuse_tokens_not_generated'], 0)})"


def drafts_tokens_per_step(f: dict[str, Any]) -> str:
    """Tokens emitted per row and step (accepted drafted tokens per drafted row); a dash without drafts."""
    if f.get("tokens_per_row_step") is None:
        return "-"
    return f"{fmt(f['tokens_per_row_step'], 2)} ({fmt(f.get('accepted_per_verify_step'), 2)})"


def drafts_acceptance(f: dict[str, Any]) -> str:
    """The share of drafted tokens accepted, by source (`self 0.41 · branch 0.63`); a dash without drafts."""
    by_source = f.get("acceptance_by_source")
    if by_source is None:
        return "-"
    return " · ".join(f"{source} {share:.2f}" for source, share in by_source.items()) or "none drafted"


def _verify_calls(f: dict[str, Any]) -> str:
    if not f.get("verify_calls"):
        return "n/a"
    return f"{fmt(f['verify_calls'], 0)} ({fmt(f['verify_skipped'], 0)})"


def _layers(f: dict[str, Any]) -> str:
    if f.get("verify_mean_layers_run") is None:
        return "n/a"
    return f"{fmt(f['verify_mean_layers_run'])} / {fmt(f['verify_num_layers'], 0)}"


def _disagreement(f: dict[str, Any]) -> str:
    if not f.get("verify_audited"):
        return "n/a"
    share = f["verify_disagreements"] / f["verify_audited"]
    return f"{fmt(f['verify_disagreements'], 0)} of {fmt(f['verify_audited'], 0)} ({share:.1%})"


def _times(value: float | None) -> str:
    return f"{fmt(value, 2)}x" if value is not None else "n/a"


COLUMNS = [
    ("mode", lambda s, f: s.mode),
    (
        "wall s (median, min-max)",
        lambda s, f: f"{fmt(f['wall_s_median'])} ({fmt(f['wall_s_min'])}-{fmt(f['wall_s_max'])})",
    ),
    ("vs radix", lambda s, f: f"{fmt(f['speedup_vs_radix'], 2)}x" if f["speedup_vs_radix"] else "n/a"),
    ("vs no-cache", lambda s, f: f"{fmt(f['speedup_vs_no_cache'], 2)}x" if f["speedup_vs_no_cache"] else "n/a"),
    ("GPU-projected s", lambda s, f: fmt(f.get("projected_gpu_s"), 2)),
    (
        "projected vs radix",
        lambda s, f: f"{fmt(f['projected_speedup_vs_radix'], 2)}x" if f.get("projected_speedup_vs_radix") else "n/a",
    ),
    ("req/s", lambda s, f: fmt(f["requests_per_s"], 2)),
    ("gen tok/s", lambda s, f: fmt(f["generated_tokens_per_s"])),
    ("generated tokens", lambda s, f: fmt(f["generated_tokens"], 0)),
    (
        "prompt tokens computed / cached",
        lambda s, f: f"{fmt(f['prompt_tokens_computed'], 0)} / {fmt(f['prompt_tokens_cached'], 0)}",
    ),
    ("cache hit rate", lambda s, f: fmt(f["cache_hit_rate"], 2)),
    ("KV evicted, tokens (rejected/finished/open)", lambda s, f: _evicted(f)),
    ("decode steps (mean batch)", lambda s, f: f"{fmt(f['decode_steps'], 0)} ({fmt(f['mean_decode_batch'])})"),
    ("decode steps vs radix", lambda s, f: _times(f.get("decode_steps_vs_radix"))),
    ("drafts: tok/step (accepted/drafted row)", lambda s, f: drafts_tokens_per_step(f)),
    ("accepted by source", lambda s, f: drafts_acceptance(f)),
    ("semantic hits (alias/probe)", lambda s, f: _semantic(f)),
    ("replayed / coalesced (tokens not generated)", lambda s, f: _reused(f)),
    ("KV held at end, tokens", lambda s, f: fmt(f["kv_tokens_held"], 0)),
    ("verify calls (skipped)", lambda s, f: _verify_calls(f)),
    ("layers run per verify", lambda s, f: _layers(f)),
    ("verify forward s", lambda s, f: fmt(f["verify_server_seconds"], 2)),
    ("CGEE vs full-depth disagreements", lambda s, f: _disagreement(f)),
    ("branches merged", lambda s, f: fmt(f.get("branches_merged"), 0)),
    ("accuracy", lambda s, f: fmt(f["accuracy"], 2)),
    ("majority-vote accuracy", lambda s, f: fmt(f.get("majority_accuracy"), 2)),
    ("agreement w/ radix", lambda s, f: fmt(f["agreement_with_radix"], 2)),
    ("self-agreement", lambda s, f: fmt(f["self_agreement"], 2)),
]


def markdown_table(summaries: Sequence[ModeSummary]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in summaries:
        if s.figures:
            cells = [fn(s, s.figures) for _, fn in COLUMNS]
        else:
            cells = [s.mode, "no run", *[""] * (len(COLUMNS) - 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_chart(summaries: Sequence[ModeSummary], path: Path, title: str) -> None:
    """Wall time (median, min-max) and prompt tokens computed vs cached, per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [s for s in summaries if s.figures]
    names = [s.mode for s in ran]
    fig, (ax_time, ax_tokens) = plt.subplots(1, 2, figsize=(11, 0.6 * len(ran) + 2.2))
    medians = [s.figures["wall_s_median"] for s in ran]
    spread = [
        [m - s.figures["wall_s_min"] for m, s in zip(medians, ran, strict=True)],
        [s.figures["wall_s_max"] - m for m, s in zip(medians, ran, strict=True)],
    ]
    ax_time.barh(names, medians, xerr=spread, color="#4C72B0", capsize=4)
    ax_time.set_xlabel("wall time, s (median; bars: min-max over repeats)")
    ax_time.invert_yaxis()
    computed = [s.figures["prompt_tokens_computed"] or 0 for s in ran]
    cached = [s.figures["prompt_tokens_cached"] or 0 for s in ran]
    ax_tokens.barh(names, computed, color="#DD8452", label="computed")
    ax_tokens.barh(names, cached, left=computed, color="#55A868", label="served from cache")
    ax_tokens.set_xlabel("prompt tokens")
    ax_tokens.invert_yaxis()
    ax_tokens.legend(loc="lower right")
    fig.suptitle(textwrap.fill(title, 150), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
