"""Calibrate the verifier's threshold on P(yes), and judge CGEE on the verdict it gives (offline, no server).

With a threshold, a verification's verdict is the accepting choice when its probability is at least the
threshold, else the most probable other one (`sglang_rksc.lang.verify.thresholded`), instead of the most
probable choice. Reads audited `verifier_check` rows (`--verifier audit --output rows.jsonl`: each call's
choice distribution after every layer, on solutions whose correctness is known):

1. `--calibrate ROWS`: the threshold on full-depth P(yes) that maximises verdict accuracy on these rows
   (the calibration slice, GSM8K 0-299); ties go to the middle of the best interval.
2. `--report ROWS`: on other rows (the reporting slice), the verdict accuracy at that threshold beside the
   always-majority verdict's, with 95% Wilson intervals; then, for each exit rule of the grid, how often the
   thresholded verdict at the exit layer differs from the thresholded verdict at full depth, and the mean
   layers run.

    python -m sglang_rksc.tools.cgee.threshold --calibrate results/vcheck/qwen-0-99.jsonl \
        --report results/vcheck/qwen-300-633.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sglang_rksc.lang.verify import thresholded
from sglang_rksc.tools.cgee.calibrate import add_rule_grid, first_missing, replay_exit
from sglang_rksc.tools.cgee.verdict_ranking import YES, load_rows
from sglang_rksc.tools.intervals import paired_bootstrap, wilson

ACCEPT = YES  # "yes" is the accepting choice of the verifier's ["yes", "no"]


def labelled_calls(rows: Sequence[dict[str, Any]]) -> list[tuple[list[list[float]], bool]]:
    """(layer profile, is the solution right) of every audited call."""
    return [
        (call["profile"], kind == "reference")
        for row in rows
        for call, kind in zip(row["verifications"], row["kinds"], strict=True)
    ]


def verdict_accuracy(calls: Sequence[tuple[list[list[float]], bool]], threshold: float | None) -> int:
    """Calls whose full-depth verdict (thresholded; None: the most probable answer) is right: yes for a right
    solution, no for a wrong one."""
    return sum((thresholded(profile[-1], ACCEPT, threshold) == ACCEPT) == right for profile, right in calls)


def calibrate(calls: Sequence[tuple[list[list[float]], bool]]) -> tuple[float, int]:
    """(threshold, right verdicts) maximising accuracy over the midpoints between observed P(yes) values."""
    values = sorted({profile[-1][ACCEPT] for profile, _ in calls})
    candidates = [0.0, *[(a + b) / 2 for a, b in itertools.pairwise(values)], 1.0 + 1e-12]
    scored = [(verdict_accuracy(calls, t), t) for t in candidates]
    best = max(score for score, _ in scored)
    ties = [t for score, t in scored if score == best]
    return ties[len(ties) // 2], best


def exit_disagreements(
    calls: Sequence[tuple[list[list[float]], bool]], threshold: float, min_layer: int, theta: float, eps: float, k: int
) -> tuple[int, float]:
    """(thresholded verdicts at the exit layer that differ from full depth, mean layers run) under one rule."""
    profiles = [profile for profile, _ in calls]
    replayed = replay_exit(profiles, min_layer, theta, eps, k)
    differ = sum(
        thresholded(p[layer - 1], ACCEPT, threshold) != thresholded(p[-1], ACCEPT, threshold)
        for p, (layer, _) in zip(profiles, replayed, strict=True)
    )
    return differ, sum(layer for layer, _ in replayed) / len(replayed)


def _share(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{k} of {n} = {k / n:.3f} (95% CI {low:.3f}-{high:.3f})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.tools.cgee.threshold",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--calibrate", nargs="+", type=Path, required=True, help="audited verifier_check rows")
    parser.add_argument("--report", nargs="*", type=Path, default=[], help="rows to report on (another slice)")
    add_rule_grid(parser, {"min_layer": [20, 24, 25, 26, 27, 28], "theta": [0.1], "eps": [0.05], "k": [1]})
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    if (missing := first_missing([*args.calibrate, *args.report])) is not None:
        print(f"error: no such file: {missing}", file=sys.stderr)
        return 2
    calibration = labelled_calls(load_rows(args.calibrate))
    if not calibration:
        print("error: no audited verifier_check rows to calibrate on", file=sys.stderr)
        return 2
    threshold, right = calibrate(calibration)
    wrong = sum(not r for _, r in calibration)
    print(f"calibration: {len(calibration)} calls; threshold on P(yes) {threshold:.6g}")
    print(f"  verdict accuracy {_share(right, len(calibration))}")
    print(f"  always-majority  {_share(max(wrong, len(calibration) - wrong), len(calibration))}")
    report = labelled_calls(load_rows(args.report)) if args.report else []
    if not report:
        return 0
    wrong = sum(not r for _, r in report)
    print(f"report: {len(report)} calls")
    print(f"  verdict accuracy {_share(verdict_accuracy(report, threshold), len(report))}")
    print(f"  argmax verdict   {_share(verdict_accuracy(report, None), len(report))}")
    print(f"  always-majority  {_share(max(wrong, len(report) - wrong), len(report))}")
    majority = wrong * 2 >= len(report)  # the majority verdict is "no" when most solutions are wrong
    ours = [float((thresholded(p[-1], ACCEPT, threshold) == ACCEPT) == right) for p, right in report]
    always = [float((not majority) == right) for _, right in report]
    diff, low, high = paired_bootstrap(ours, always)
    print(f"  threshold minus always-majority: {100 * diff:+.1f} points (95% paired bootstrap {100 * low:+.1f} to "
          f"{100 * high:+.1f})")  # fmt: skip
    depth = len(report[0][0])
    print("  exit rule (min_layer theta eps k): thresholded verdict against full depth, mean layers run (of "
          f"{depth})")  # fmt: skip
    for min_layer, theta, eps, k in itertools.product(args.min_layer, args.theta, args.eps, args.k):
        differ, mean = exit_disagreements(report, threshold, min(min_layer, depth), theta, eps, k)
        print(f"    {min_layer:3d} {theta:<5g} {eps:<5g} {k}: {_share(differ, len(report))}, {mean:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
