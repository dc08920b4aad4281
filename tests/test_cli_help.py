"""Every program and benchmark explains its flags, and refuses bad ones with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# A fresh Python that imports SGLang (about 6 s) runs the commands: not in the fast tier.
pytestmark = pytest.mark.slow

COMMANDS = {
    "sglang_rksc.programs.tree_of_thought": [
        "--branches",
        "--depth",
        "--temperature",
        "--verifier",
        "--url",
        "--output",
    ],
    "sglang_rksc.programs.self_consistency_verify": [
        "--samples",
        "--temperature",
        "--verifier",
        "--url",
        "--output",
        "--aggregate",
        "--packets",
    ],
    "sglang_rksc.programs.verifier_check": ["--verifier", "--url", "--output", "arithmetic slip"],
    "sglang_rksc.programs.game_of_24": ["--breadth", "--proposals", "--url", "--output"],
    "sglang_rksc.bench.compare": [
        "--program",
        "--modes",
        "--repeats",
        "--temperature",
        "--program-args",
        "the merge threshold",
        "--resume",
        "--chunk",
        "--audit-rate",
    ],
    "sglang_rksc.bench.answer_costs": ["folders"],
    "sglang_rksc.tools.audits.replay": ["--model", "--limit", "--answers", "--output"],
    "sglang_rksc.bench.rename_mode": ["old", "new", "--was"],
    "sglang_rksc.bench.probe_pairs": ["--mode", "--model", "--threshold", "--length-ratio", "--output"],
    "sglang_rksc.tools.cgee.threshold": ["--calibrate", "--report", "--min-layer"],
    "sglang_rksc.bench.decode_throughput": ["--max-new-tokens", "--repeats", "--url", "--model", "--cost-model"],
    "sglang_rksc.bench.serve": ["--modes", "--budgets", "--clients", "--rate", "--mix", "--cost-model", "--seed"],
    "sglang_rksc.tools.cgee.calibrate": ["--min-layer", "--theta", "--eps", "--k", "--accept"],
    "sglang_rksc.tools.cgee.verdict_ranking": ["--min-layer", "--theta", "--eps", "--k"],
    "sglang_rksc.tools.merge_calibrate": ["--thresholds", "--bound"],
    "sglang_rksc.bench.packets": ["--samples", "--num-problems", "--model", "--output"],
    "sglang_rksc.programs.tree_of_thought --merge": ["--merge-branches", "--rksc-span-embeddings on"],
}

BAD_FLAGS = [
    ("sglang_rksc.programs.tree_of_thought", ["--branches", "0"], "must be at least 1"),
    ("sglang_rksc.programs.tree_of_thought", ["--temperature", "5"], "must be within [0, 2]"),
    ("sglang_rksc.programs.game_of_24", ["--start", "898", "--num-problems", "5"], "has only 1 there"),
    ("sglang_rksc.programs.self_consistency_verify", ["--url", "http://127.0.0.1:9"], "no SGLang server answers"),
    ("sglang_rksc.bench.compare", ["--modes", "radix,turbo"], "unknown mode(s) turbo"),
    ("sglang_rksc.bench.serve", ["--mix", "chess:1"], "unknown program"),
    ("sglang_rksc.bench.serve", ["--clients", "2", "--rate", "3"], "not allowed with argument"),
    ("sglang_rksc.bench.compare", ["--cost-model", "/nonexistent.json"], "cost model"),
    ("sglang_rksc.bench.compare", ["--start", "290"], "mix the calibration slice"),
    ("sglang_rksc.bench.compare", ["--program-args", "--branches x"], "invalid positive_int value"),
    ("sglang_rksc.bench.compare", ["--program", "game_of_24", "--modes", "rksc-cgee"], "needs program flags"),
    ("sglang_rksc.programs.self_consistency_verify", ["--verifier", "fast"], "invalid choice: 'fast'"),
    ("sglang_rksc.tools.cgee.calibrate", ["/nonexistent.jsonl"], "no such file"),
    ("sglang_rksc.programs.game_of_24", ["--merge-branches", "1.5"], "must be a similarity within [-1, 1]"),
    ("sglang_rksc.bench.compare", ["--modes", "rksc-merge@2"], "similarity in [-1, 1]"),
    ("sglang_rksc.tools.merge_calibrate", ["/nonexistent.json"], "No such file"),
    ("sglang_rksc.bench.compare", ["--audit-rate", "2"], "--audit-rate must be a share in [0, 1]"),
    ("sglang_rksc.bench.answer_costs", ["/nonexistent"], "no journal.jsonl"),
    ("sglang_rksc.tools.audits.replay", ["/nonexistent.jsonl"], "no such audit log"),
    ("sglang_rksc.tools.cgee.threshold", ["--calibrate", "/nonexistent.jsonl"], "no such file"),
]

# All the commands below run in one fresh Python that imports SGLang once (35 fresh Pythons took minutes):
# each as `python -m module args` would, its output and exit status caught (a string exit status printed
# to stderr and made 1, an uncaught exception's traceback printed and made 1), logging reset between them.
DRIVER = r"""
import contextlib, io, json, logging, runpy, sys, traceback
results = []
for module, args in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [module, *args]
    logging.root.handlers.clear()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"stdout": out.getvalue(), "stderr": err.getvalue(), "returncode": code})
json.dump(results, sys.__stdout__)
"""


@pytest.fixture(scope="module")
def ran() -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Every command of this file, run once in one fresh Python: (module, *args) -> its outcome."""
    # Two COMMANDS entries name one module (`tree_of_thought --merge` checks more of the same help): run it once.
    helps = dict.fromkeys(m.split()[0] for m in sorted(COMMANDS))
    commands = [(m, ["--help"]) for m in helps] + [(m, a) for m, a, _ in BAD_FLAGS]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps(commands), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        (module, *args): subprocess.CompletedProcess([module, *args], r["returncode"], r["stdout"], r["stderr"])
        for (module, args), r in zip(commands, json.loads(done.stdout), strict=True)
    }


def test_a_fresh_python_runs_a_command_alone():
    """One command as a user runs it, in a Python of its own: nothing above relies on an earlier import."""
    done = subprocess.run(
        [sys.executable, "-m", "sglang_rksc.bench.compare", "--modes", "radix,turbo"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown mode(s) turbo" in done.stderr


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_names_every_flag(ran, module):
    done = ran[(module.split()[0], "--help")]
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps long help lines
    for flag in COMMANDS[module]:
        assert flag in text, f"{module} --help does not mention {flag}"


@pytest.mark.parametrize("module, args, message", BAD_FLAGS)
def test_bad_flags_fail_clearly(ran, module, args, message):
    done = ran[(module, *args)]
    assert done.returncode != 0
    assert message in done.stderr
