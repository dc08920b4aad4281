"""The three programs on the real server, on a few problems, with short generations."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from sglang_rksc.programs import (
    common,
    game24,
    game_of_24,
    gsm8k,
    self_consistency_verify,
    tree_of_thought,
    verifier_check,
)


@pytest.fixture(scope="module")
def backend(rksc_server):
    return common.make_backend(rksc_server.url)


def test_tree_of_thought(backend):
    options = common.program_options(tree_of_thought, ["--max-tokens", "24", "--temperature", "0"])
    (row,) = tree_of_thought.run(backend, gsm8k.load_problems(0, 1), options, parallel=1, progress_bar=False)
    assert row["index"] == 0 and row["gold"] == "18"
    assert len(row["branches"]) == 4 and all(1 <= s <= 5 for s in row["branch_scores"])
    # 2 plans + 4 solutions + 4 reflections, each with its prompt partly served from the cache.
    assert row["tokens"]["requests"] == 10
    assert 0 < row["tokens"]["cached_tokens"] < row["tokens"]["prompt_tokens"]
    assert row["correct"] == (row["prediction"] == "18")


def test_self_consistency_verify(backend):
    options = common.program_options(self_consistency_verify, ["--samples", "3", "--max-tokens", "24"])
    rows = self_consistency_verify.run(backend, gsm8k.load_problems(1, 2), options, parallel=2, progress_bar=False)
    assert [r["index"] for r in rows] == [1, 2]
    for row in rows:
        assert len(row["sample_answers"]) == 3 and set(row["verdicts"]) <= {"yes", "no"}
        assert all(0.0 <= p <= 1.0 for p in row["p_yes"])
        # The solutions share the question: the later ones are served from the cache.
        assert row["tokens"]["requests"] == 3 and row["tokens"]["cached_tokens"] > 0


def test_self_consistency_with_audited_cgee(backend):
    options = common.program_options(
        self_consistency_verify, ["--samples", "2", "--max-tokens", "24", "--verifier", "audit"]
    )
    (row,) = self_consistency_verify.run(backend, gsm8k.load_problems(3, 1), options, parallel=1, progress_bar=False)
    assert len(row["verifications"]) == 2
    for record, verdict in zip(row["verifications"], row["verdicts"], strict=True):
        # Audited: every call reaches the server and runs every layer, the full-depth verdict beside.
        assert record["verdict"] == verdict and record["full_verdict"] in ("yes", "no")
        assert record["layers_run"] == record["num_layers"] == 30 and record["confidence"] is not None
        assert record["skipped"] or record["exit_layer"] is None or record["exit_layer"] <= 30
    summary = self_consistency_verify.summarize([row], Namespace(merge_branches=None))
    assert summary["verify_calls"] == summary["verify_audited"] == 2


def test_verifier_check_audits_every_written_solution_at_the_layer_exit(backend):
    options = common.program_options(verifier_check, ["--verifier", "audit"])
    problems = verifier_check.load_problems(5, 2)
    rows = verifier_check.run(backend, problems, options, parallel=2, progress_bar=False)
    for problem, row in zip(problems, rows, strict=True):
        assert row["kinds"] == [c.kind for c in problem.candidates] and len(row["verifications"]) == 3
        for record, verdict in zip(row["verifications"], row["verdicts"], strict=True):
            # No generation to judge: the gate never skips; the server runs every layer to audit the exit.
            assert not record["skipped"] and record["confidence"] is None
            assert record["verdict"] == verdict and record["full_verdict"] in ("yes", "no")
            assert record["layers_run"] == record["num_layers"] == 30 and len(record["profile"]) == 30
        # One server call per solution, each one forward (its verdict token); the question is shared.
        assert row["tokens"]["requests"] == 3 and row["tokens"]["completion_tokens"] == 3
        assert row["tokens"]["cached_tokens"] > 0
    summary = verifier_check.summarize(rows, options)
    assert summary["verify_calls"] == summary["verify_audited"] == 6
    assert 0 <= summary["verify_disagreements"] <= 6


def test_tree_of_thought_scores_with_cgee(backend):
    options = common.program_options(
        tree_of_thought, ["--depth", "1", "--max-tokens", "16", "--temperature", "0", "--verifier", "cgee"]
    )
    (row,) = tree_of_thought.run(backend, gsm8k.load_problems(4, 1), options, parallel=1, progress_bar=False)
    assert len(row["verifications"]) == 2 and all(1 <= s <= 5 for s in row["branch_scores"])
    for record in row["verifications"]:
        assert record["skipped"] == (record["layers_run"] == 0)
        assert record["skipped"] or 1 <= record["layers_run"] <= record["num_layers"]


def test_game_of_24_steps_are_exact(backend):
    options = common.program_options(game_of_24, ["--breadth", "2", "--max-tokens", "48"])
    puzzles = game24.load_puzzles(0, 2)
    rows = game_of_24.run(backend, puzzles, options, parallel=2, progress_bar=False)
    for puzzle, row in zip(puzzles, rows, strict=True):
        assert row["numbers"] == list(puzzle.numbers) and 1 <= len(row["search"]) <= 3
        assert all(len(level) <= 2 for level in row["search"])
        # Whatever the model proposed, the kept steps replay exactly from the puzzle.
        state = game24.State.start(puzzle.numbers)
        for step in (row["prediction"] or "").split("; ") if row["prediction"] else []:
            state = game24.apply_step(state, step)
            assert state is not None
        assert row["correct"] == state.solved


def test_program_command_line_writes_json_lines(rksc_server, tmp_path: Path):
    out = tmp_path / "rows.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sglang_rksc.programs.tree_of_thought",
            "--url",
            rksc_server.url,
            "--start",
            "5",
            "--num-problems",
            "1",
            "--depth",
            "1",
            "--max-tokens",
            "16",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "problem 5: answer" in done.stdout and "1 problems in" in done.stdout
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["index"] == 5 and row["tokens"]["requests"] == 6  # 2 plans, 2 solutions, 2 reflections
