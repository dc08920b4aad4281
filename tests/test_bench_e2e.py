"""The side-by-side benchmark end to end: real servers, one puzzle, three modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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
