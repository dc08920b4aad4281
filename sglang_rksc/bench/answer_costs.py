"""What each mechanism costs in answers: final answers changed against `radix`, beyond `radix`'s own drift.

Reads one or more `bench.compare` output folders (their journal, so a run still filling in can be reported)
that ran `radix`, `radix-rerun` and the modes to judge on the same problems, and prints one table: per mode,
the problems compared, the answers it changed against `radix` (with a 95% Wilson interval), the answers
`radix-rerun` changed (the drift between two runs of the same thing), and the difference, with a 95%
paired-bootstrap interval over the problems. `rksc-packets` is judged within its own run as well: the
gather step's answer with packets against the same gather computed in full, on the same branches.

    python -m sglang_rksc.bench.answer_costs results/answers/tot results/answers/scv

The aim (issue 34) is at most 2 points beyond drift for every mechanism in `rksc-full`'s default set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglang_rksc.bench.compare import run_key
from sglang_rksc.bench.journal import FILE_NAME, JournalError, key_totals, read_records
from sglang_rksc.tools.intervals import paired_bootstrap, wilson

REFERENCE, RERUN = "radix", "radix-rerun"


@dataclass(frozen=True)
class Cost:
    """One mode's answer figures against the reference, on the problems all three runs share."""

    program: str
    mode: str
    problems: int
    changed: int
    drift: int
    beyond: tuple[float, float, float]  # (difference of shares, 95% low, high), paired bootstrap
    accuracy: float
    reference_accuracy: float


def load_rows(folder: Path) -> tuple[str, dict[str, dict[int, dict[str, Any]]]]:
    """(program, rows by mode then problem index) from a compare folder's journal, first repeat only."""
    records = read_records(folder / FILE_NAME)
    config = records[0]["config"]
    rows = {mode: key_totals(records[1:], run_key(mode, 0)).rows for mode, *_ in config["modes"]}
    return config["program"], {mode: found for mode, found in rows.items() if found}


def costs(program: str, rows: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> list[Cost]:
    """Every mode other than the two references, on the problems it shares with both."""
    if REFERENCE not in rows or RERUN not in rows:
        return []
    ref, rerun = rows[REFERENCE], rows[RERUN]
    out = []
    for mode, mine in rows.items():
        if mode in (REFERENCE, RERUN):
            continue
        shared = sorted(set(mine) & set(ref) & set(rerun))
        if not shared:
            continue
        changed = [float(mine[i]["prediction"] != ref[i]["prediction"]) for i in shared]
        drift = [float(rerun[i]["prediction"] != ref[i]["prediction"]) for i in shared]
        out.append(
            Cost(
                program,
                mode,
                len(shared),
                int(sum(changed)),
                int(sum(drift)),
                paired_bootstrap(changed, drift),
                sum(bool(mine[i]["correct"]) for i in shared) / len(shared),
                sum(bool(ref[i]["correct"]) for i in shared) / len(shared),
            )
        )
    return out


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
) -> str:
    head = (
        "| program | mode | problems | answers changed vs radix (95% CI) | radix-rerun's drift | beyond drift, points "
        "(95% paired bootstrap) | accuracy (radix) |\n|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for c in all_costs:
        diff, low, high = c.beyond
        lines.append(
            f"| {c.program} | {c.mode} | {c.problems} | {_share(c.changed, c.problems)} | "
            f"{_share(c.drift, c.problems)} | {100 * diff:+.1f} ({100 * low:+.1f} to {100 * high:+.1f}) | "
            f"{c.accuracy:.2f} ({c.reference_accuracy:.2f}) |"
        )
    for program, k, n in packets:
        lines.append(f"\n{program}, rksc-packets: gather answers changed by packets against the same gather in full, "
                     f"same branches: {_share(k, n)}")  # fmt: skip
    for program, mode, (calls, differ, skips, skips_differ) in verdicts:
        if calls:
            lines.append(f"\n{program}, {mode}: verdicts against the full-depth verdict {_share(differ, calls)}; "
                         f"gate skips {skips}, of them against it {skips_differ}")  # fmt: skip
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
    for folder in args.folders:
        if not (folder / FILE_NAME).is_file():
            print(f"error: no {FILE_NAME} in {folder}", file=sys.stderr)
            return 2
        try:
            program, rows = load_rows(folder)
        except JournalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        found = costs(program, rows)
        if not found:
            print(f"note: {folder} has no problem run under radix, radix-rerun and another mode yet", file=sys.stderr)
        all_costs += found
        if "rksc-packets" in rows:
            packets.append((program, *packets_within_run(rows["rksc-packets"])))
        verdicts += [(program, mode, verdicts_within_run(rows[mode])) for mode in rows if "audit" in mode]
    print(markdown(all_costs, packets, verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
