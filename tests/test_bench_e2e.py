"""The side-by-side benchmark end to end: real servers, one puzzle, three modes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_compare_runs_modes_side_by_side(default_model_dir, server_subprocess, tmp_path: Path):
    # No --url: the benchmark starts a server per mode.
    done = server_subprocess(
        "sglang_rksc.bench.compare",
        "--program",
        "game_of_24",
        "--start",
        "1",
        "--num-problems",
        "1",
        "--modes",
        "no-cache,radix",
        "--repeats",
        "1",
        "--program-args",
        "--breadth 1 --max-tokens 32",
        "--output-dir",
        str(tmp_path),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| no-cache |" in done.stdout and "| radix |" in done.stdout
    for name in ("bench.md", "bench.json", "bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "bench.json").read_text())
    figures = {s["mode"]: s["figures"] for s in result["summaries"]}
    nocache, radix = figures["no-cache"], figures["radix"]
    # Same greedy program on the same puzzle: the same answer and the same number of generated tokens...
    assert nocache["agreement_with_radix"] == radix["agreement_with_radix"] == 1.0
    assert nocache["generated_tokens"] == radix["generated_tokens"] > 0
    # ... but only the radix cache serves the shared few-shot prompts.
    assert nocache["prompt_tokens_cached"] == 0 and radix["prompt_tokens_cached"] > 0
    assert radix["prompt_tokens_computed"] < nocache["prompt_tokens_computed"]
    assert radix["speedup_vs_radix"] == 1.0 and nocache["speedup_vs_no_cache"] == 1.0
    assert radix["decode_steps"] > 0 and radix["prefill_tokens_forwarded"] > 0
    # The report can be written again from the JSON alone.
    first = (tmp_path / "bench.md").read_text()
    (tmp_path / "bench.md").unlink()
    again = subprocess.run(
        [sys.executable, "-m", "sglang_rksc.bench.compare", "--rerender", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "bench.md").read_text() == first


def _journal_rows(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "row"]


@pytest.mark.server  # by hand: the benchmark it kills starts the server
def test_a_killed_comparison_resumes_without_repeating_or_losing_a_problem(default_model_dir, tmp_path: Path):
    import psutil

    args = [
        sys.executable, "-m", "sglang_rksc.bench.compare", "--program", "game_of_24", "--start", "1",
        "--num-problems", "3", "--modes", "radix", "--repeats", "1", "--parallel", "1",
        "--program-args", "--breadth 1 --max-tokens 32", "--output-dir", str(tmp_path),
    ]  # fmt: skip
    journal = tmp_path / "journal.jsonl"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and _journal_rows(journal):
                break
            time.sleep(0.2)
        servers = psutil.Process(proc.pid).children(recursive=True)
        assert proc.poll() is None and servers, "the run ended before it could be killed midway"
        proc.terminate()  # SIGTERM, as a session's end sends it
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The server it had launched went with it.
    psutil.wait_procs(servers, timeout=30)
    assert not [s for s in servers if s.is_running() and s.status() != psutil.STATUS_ZOMBIE]
    before = _journal_rows(journal)
    assert 1 <= len(before) < 3 and not (tmp_path / "bench.json").exists()

    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _journal_rows(journal)
    # Every problem once: those recorded before the kill kept as they were, the others run after it.
    assert sorted(r["index"] for r in after) == [1, 2, 3]
    assert after[: len(before)] == before
    result = json.loads((tmp_path / "bench.json").read_text())
    (run,) = result["runs"]
    assert [r["index"] for r in run["rows"]] == [1, 2, 3]
    assert run["server"]["generated_tokens"] >= sum(r["tokens"]["completion_tokens"] for r in run["rows"]) > 0
    # Another configuration does not continue this journal.
    refused = subprocess.run([*args[:-2], "--num-problems", "2", "--output-dir", str(tmp_path), "--resume"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 2 and "other settings (num_problems)" in refused.stderr
