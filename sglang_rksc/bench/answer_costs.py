"""What each mechanism costs in answers: final answers changed against `radix`, beyond `radix`'s own drift.

Reads one or more `bench.compare` output folders (their journal, so a run still filling in can be reported)
that ran `radix`, `radix-rerun` and the modes to judge on the same problems, and prints one table: per mode,
the problems compared, the answers it changed against `radix` (with a 95% Wilson interval), the answers
`radix-rerun` changed (the drift between two runs of the same thing), and the difference, with a 95%
paired-bootstrap interval over the problems. `rksc-packets` is judged within its own run as well: the
gather step's answer with packets against the same gather computed in full, on the same branches. Last, per
mode, how often each approximate mechanism it turned on acted (ASKS forks, merges, gate skips, gather prompts
with packets): a mechanism that never acted in a run is judged there by drift alone.

A mode is compared with `radix` on every problem both ran. `radix-rerun` may have run on fewer of them (where
it was shown not to drift, a long run may leave it out to save a third of its time): drift is measured on the
problems it ran and counted as none on the others, which charges every change there to the mode.

    python -m sglang_rksc.bench.answer_costs results/answers/tot results/answers/scv

The aim (issue 34) is at most 2 points beyond drift for every mechanism in `rksc-full`'s default set.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglang_rksc.bench.compare import PROGRAMS, run_key
from sglang_rksc.bench.journal import FILE_NAME, JournalError, KeyTotals, key_totals, read_records
from sglang_rksc.programs import common, verification
from sglang_rksc.tools.intervals import paired_bootstrap, wilson

REFERENCE, RERUN = "radix", "radix-rerun"


@dataclass(frozen=True)
class Cost:
    """One mode's answer figures against the reference, on the problems both ran (`radix-rerun` on
    `rerun_problems` of them)."""

    program: str
    mode: str
    problems: int
    changed: int
    drift: int
    rerun_problems: int  # of `problems`, those radix-rerun ran: drift is counted on these alone
    beyond: tuple[float, float, float]  # (difference of shares, 95% low, high), paired bootstrap
    accuracy: float
    reference_accuracy: float
    # Which way the changes went, against the reference's right answers: at these sizes every change so far fell
    # on a problem `radix` got wrong, so "right answers lost" is the figure drift does not blur.
    solved: int = 0  # problems the reference answered right
    lost: int = 0  # of those, answered wrong by this mode
    gained: int = 0  # of the rest, answered right by this mode
    drift_lost: int = 0  # the same two counts for radix-rerun
    drift_gained: int = 0
    # Problems where every text generated is the reference's, token for token: in float32 `radix-rerun` matches on
    # all, so there a mode's other problems are exactly where its mechanisms moved the computation.
    same_texts: int = 0
    drift_same_texts: int = 0
    # Of the others, those where the mode merged nothing: their texts moved by a mechanism other than merging
    # (a merged branch's texts are left out of its row, so a merge alone makes a row differ).
    unmerged_differ: int = 0


def load_totals(folder: Path) -> tuple[dict[str, Any], dict[str, KeyTotals]]:
    """A compare folder's configuration and, per mode, what its first repeat recorded (one read of the journal)."""
    records = read_records(folder / FILE_NAME)
    config = records[0]["config"]
    return config, {mode: key_totals(records[1:], run_key(mode, 0)) for mode, *_ in config["modes"]}


def rows_of(totals: Mapping[str, KeyTotals]) -> dict[str, dict[int, dict[str, Any]]]:
    """Rows by mode then problem index, for the modes that recorded any."""
    return {mode: t.rows for mode, t in totals.items() if t.rows}


def decisions_of(config: Mapping[str, Any], totals: Mapping[str, KeyTotals]) -> list[tuple[str, str, str]]:
    """(program, mode, what its approximate mechanisms decided) for every mode of a compare run that ran one."""
    program = config["program"]
    out = []
    for mode, server_args, program_args in config["modes"]:
        found = totals[mode]
        argv = [*shlex.split(config.get("program_args") or ""), *program_args]
        text = decisions(program, server_args, argv, found.rows, found.server) if found.rows else ""
        if text:
            out.append((program, mode, text))
    return out


def decisions(
    program: str,
    server_args: Sequence[str],
    program_args: Sequence[str],
    rows: Mapping[int, Mapping[str, Any]],
    server: Mapping[str, float],
) -> str:
    """How often each approximate mechanism a mode turned on acted: what its answer changes rest on (a mechanism
    that never acted is judged by drift alone). Empty for a mode with none on. The program's flags are read
    by its own parser, as `bench.compare` runs them."""
    options = common.program_options(PROGRAMS[program], program_args)
    parts = []
    if "--rksc-semantic" in server_args:
        probe = int(server.get("forks_probe", 0))
        forks = int(server.get("forks_alias", 0)) + probe
        parts.append(
            f"ASKS forks {forks} ({probe} by the probe), follow-ups from a donor {int(server.get('followups_hit', 0))}"
        )
    # Whether the program merged at all; the model's threshold does not matter here (1.0 stands in for it).
    if common.merge_threshold_for(program, getattr(options, "merge_branches", None), 1.0) is not None:
        merged_away = sum(merged(r) for r in rows.values())
        kept = sum(len(r.get("branch_answers", r.get("sample_answers")) or []) for r in rows.values())
        parts.append(f"merged {merged_away} of {merged_away + kept} branches")
    if verification.as_verifier(getattr(options, "verifier", "select")).gated:
        calls = [v for r in rows.values() for v in r.get("verifications") or []]
        parts.append(f"gate skipped {sum(bool(v['skipped']) for v in calls)} of {len(calls)} verifications")
    if getattr(options, "aggregate", None) == "usc" and options.packets != "off":
        parts.append(f"gather prompts with packets {sum(bool(r.get('usc')) for r in rows.values())}")
    return f"{'; '.join(parts)} ({len(rows)} problem{'' if len(rows) == 1 else 's'})" if parts else ""


def costs(program: str, rows: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> list[Cost]:
    """Every mode other than the two references, on the problems it shares with `radix`. Drift on a problem
    `radix-rerun` did not run counts as none: every change there is charged to the mode."""
    if REFERENCE not in rows or RERUN not in rows:
        return []
    ref, rerun = rows[REFERENCE], rows[RERUN]
    out = []
    for mode, mine in rows.items():
        if mode in (REFERENCE, RERUN):
            continue
        shared = sorted(set(mine) & set(ref))
        rerun_shared = set(shared) & set(rerun)  # the problems drift is measured on
        if not rerun_shared:
            continue
        changed = [float(mine[i]["prediction"] != ref[i]["prediction"]) for i in shared]
        drift = [float(i in rerun and rerun[i]["prediction"] != ref[i]["prediction"]) for i in shared]
        right = {i for i in shared if ref[i]["correct"]}
        moved = [i for i in shared if texts(mine[i]) != texts(ref[i])]  # problems whose texts are not radix's
        out.append(
            Cost(
                program,
                mode,
                len(shared),
                int(sum(changed)),
                int(sum(drift)),
                len(rerun_shared),
                paired_bootstrap(changed, drift),
                sum(bool(mine[i]["correct"]) for i in shared) / len(shared),
                sum(bool(ref[i]["correct"]) for i in shared) / len(shared),
                solved=len(right),
                lost=_flipped(mine, right, to=False),
                gained=_flipped(mine, set(shared) - right, to=True),
                drift_lost=_flipped(rerun, right & rerun_shared, to=False),
                drift_gained=_flipped(rerun, rerun_shared - right, to=True),
                same_texts=len(shared) - len(moved),
                drift_same_texts=sum(texts(rerun[i]) == texts(ref[i]) for i in rerun_shared),
                unmerged_differ=sum(not merged(mine[i]) for i in moved),
            )
        )
    return out


def texts(row: Mapping[str, Any]) -> list[Any]:
    """Every text a problem's row records as generated, in order: self-consistency's solutions, tree-of-thought's
    plans, solutions and reflections (a merged branch is not among them)."""
    if "solutions" in row:
        return list(row["solutions"])
    return [[b.get(k) for k in ("plan", "solution", "reflection")] for b in row.get("branches") or []]


def merged(row: Mapping[str, Any]) -> int:
    """How many branches (tree-of-thought) or samples (self-consistency) a problem's row merged away."""
    return int(row.get("merged_branches", row.get("merged_samples")) or 0)


def _flipped(rows: Mapping[int, Mapping[str, Any]], problems: set[int], *, to: bool) -> int:
    """How many of `problems` this run answered right (`to=True`) or wrong (`to=False`)."""
    return sum(bool(rows[i]["correct"]) == to for i in problems)


def packets_within_run(rows: Mapping[int, Mapping[str, Any]]) -> tuple[int, int]:
    """(gather answers changed by packets against the same gather in full, gathers with both)."""
    pairs = [r["usc"] for r in rows.values() if r.get("usc") and r["usc"].get("full")]
    return sum(p["prediction"] != p["full"]["prediction"] for p in pairs), len(pairs)


def verdicts_within_run(rows: Mapping[int, Mapping[str, Any]]) -> tuple[int, int, int, int]:
    """An audited CGEE run's verifications: (audited, against the full-depth verdict, skipped by the gate,
    skips against it)."""
    calls = [v for r in rows.values() for v in r.get("verifications") or [] if v.get("full_verdict") is not None]
    skips = [v for v in calls if v["skipped"]]
    return (
        len(calls),
        sum(v["verdict"] != v["full_verdict"] for v in calls),
        len(skips),
        sum(v["verdict"] != v["full_verdict"] for v in skips),
    )


def _share(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{k} of {n} ({100 * k / n:.1f}%, {100 * low:.1f}-{100 * high:.1f})"


def markdown(
    all_costs: Sequence[Cost],
    packets: Sequence[tuple[str, int, int]],
    verdicts: Sequence[tuple[str, str, tuple[int, int, int, int]]] = (),
    acted: Sequence[tuple[str, str, str]] = (),
) -> str:
    head = (
        "| program | mode | problems | answers changed vs radix (95% CI) | radix-rerun's drift | beyond drift, points "
        "(95% paired bootstrap) | accuracy (radix) | radix's right answers lost (95% CI); wrong ones made right; "
        "radix-rerun's | problems with radix's texts token for token (radix-rerun's); of the others, those without a "
        "merge |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for c in all_costs:
        diff, low, high = c.beyond
        # Where radix-rerun ran on fewer problems than the mode, say on how many: no drift is counted on the rest.
        partial = c.rerun_problems != c.problems
        fewer = f", rerun on {c.rerun_problems} (none counted on the rest)" if partial else ""
        of_rerun = f" of {c.rerun_problems}" if partial else ""
        lines.append(
            f"| {c.program} | {c.mode} | {c.problems} | {_share(c.changed, c.problems)} | "
            f"{_share(c.drift, c.rerun_problems)}{fewer} | {100 * diff:+.1f} ({100 * low:+.1f} to {100 * high:+.1f}) | "
            f"{c.accuracy:.2f} ({c.reference_accuracy:.2f}) | {_share(c.lost, c.solved) if c.solved else '-'}; "
            f"{c.gained} of {c.problems - c.solved}; rerun {c.drift_lost} and {c.drift_gained} | "
            f"{c.same_texts} of {c.problems} ({c.drift_same_texts}{of_rerun}); {c.unmerged_differ} without a merge |"
        )
    for program, k, n in packets:
        lines.append(f"\n{program}, rksc-packets: gather answers changed by packets against the same gather in full, "
                     f"same branches: {_share(k, n)}")  # fmt: skip
    for program, mode, (calls, differ, skips, skips_differ) in verdicts:
        if calls:
            lines.append(f"\n{program}, {mode}: verdicts against the full-depth verdict {_share(differ, calls)}; "
                         f"gate skips {skips}, of them against it {skips_differ}")  # fmt: skip
    if acted:
        lines.append("\nWhat the approximate mechanisms did in each run:")
        lines += [f"- {program}, {mode}: {text}" for program, mode, text in acted]
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.bench.answer_costs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("folders", nargs="+", type=Path, help="bench.compare output folders (with journal.jsonl)")
    args = parser.parse_args(None if argv is None else list(argv))
    all_costs: list[Cost] = []
    packets: list[tuple[str, int, int]] = []
    verdicts: list[tuple[str, str, tuple[int, int, int, int]]] = []
    acted: list[tuple[str, str, str]] = []
    for folder in args.folders:
        if not (folder / FILE_NAME).is_file():
            print(f"error: no {FILE_NAME} in {folder}", file=sys.stderr)
            return 2
        try:
            config, totals = load_totals(folder)
        except JournalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        program, rows = config["program"], rows_of(totals)
        found = costs(program, rows)
        if not found:
            print(f"note: {folder} has no problem run under radix, radix-rerun and another mode yet", file=sys.stderr)
        all_costs += found
        if "rksc-packets" in rows:
            packets.append((program, *packets_within_run(rows["rksc-packets"])))
        verdicts += [(program, mode, verdicts_within_run(rows[mode])) for mode in rows if "audit" in mode]
        acted += decisions_of(config, totals)
    print(markdown(all_costs, packets, verdicts, acted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
