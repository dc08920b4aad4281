"""The side-by-side benchmark end to end: real servers, two puzzles, two modes, killed midway and resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _journal_rows(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "row"]


def _kill_after_first_row(args: list[str], journal: Path) -> list:
    """Run the benchmark until its journal holds a row, then SIGTERM it (as a session's end does); the
    server processes it had launched are returned."""
    import psutil

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and _journal_rows(journal):
                break
            time.sleep(0.2)
        servers = psutil.Process(proc.pid).children(recursive=True)
        assert proc.poll() is None and servers, "the run ended before it could be killed midway"
        proc.terminate()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return servers


def test_compare_runs_modes_side_by_side_and_a_killed_run_resumes(default_model_dir, server_subprocess, tmp_path: Path):
    import psutil

    # No --url: the benchmark starts a server per mode.
    flags = [
        "--program", "game_of_24", "--start", "1", "--num-problems", "2", "--modes", "no-cache,radix",
        "--repeats", "1", "--parallel", "1", "--program-args", "--breadth 1 --max-tokens 32",
        "--output-dir", str(tmp_path),
    ]  # fmt: skip
    journal = tmp_path / "journal.jsonl"
    servers = _kill_after_first_row([sys.executable, "-m", "sglang_rksc.bench.compare", *flags], journal)
    # The server it had launched went with it.
    psutil.wait_procs(servers, timeout=30)
    assert not [s for s in servers if s.is_running() and s.status() != psutil.STATUS_ZOMBIE]
    before = _journal_rows(journal)
    assert 1 <= len(before) < 4 and not (tmp_path / "bench.json").exists()

    done = server_subprocess("sglang_rksc.bench.compare", *flags, "--resume", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _journal_rows(journal)
    # Every problem of every mode once: those recorded before the kill kept as they were, the others run after.
    assert sorted((r["key"], r["index"]) for r in after) == [("no-cache#0", 1), ("no-cache#0", 2), ("radix#0", 1),
                                                              ("radix#0", 2)]  # fmt: skip
    assert after[: len(before)] == before
    assert "| no-cache |" in done.stdout and "| radix |" in done.stdout
    for name in ("bench.md", "bench.json", "bench.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "bench.json").read_text())
    for run in result["runs"]:
        assert [r["index"] for r in run["rows"]] == [1, 2]
        assert run["server"]["generated_tokens"] >= sum(r["tokens"]["completion_tokens"] for r in run["rows"]) > 0
    figures = {s["mode"]: s["figures"] for s in result["summaries"]}
    nocache, radix = figures["no-cache"], figures["radix"]
    # Same greedy program on the same puzzles: the same answers and the same number of generated tokens...
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
    again = server_subprocess("sglang_rksc.bench.compare", "--rerender", str(tmp_path / "bench.json"), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "bench.md").read_text() == first
    # Another configuration does not continue this journal.
    other = [*flags[:5], "1", *flags[6:]]
    refused = server_subprocess("sglang_rksc.bench.compare", *other, "--resume", timeout=300)
    assert refused.returncode == 2 and "other settings (num_problems)" in refused.stderr
