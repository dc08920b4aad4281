"""The serving benchmark: its job sequence, its figures, and a tiny run on the real server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from sglang_rksc.bench import modes as modes_mod
from sglang_rksc.bench import serve
from sglang_rksc.runtime import cost_model
from tests.conftest import STRICT_MEMORY_ENV, assert_idle_and_clean, flush_cache


def test_jobs_are_the_same_sequence_for_every_mode():
    mix = serve.parse_mix("tree_of_thought:2,game_of_24:1")
    a = serve.build_jobs(mix, 9, seed=3, rate_per_min=None)
    b = serve.build_jobs(mix, 9, seed=3, rate_per_min=None)
    assert [(j.program, j.problem) for j in a] == [(j.program, j.problem) for j in b]
    assert {j.program for j in a} == {"tree_of_thought", "game_of_24"} and [j.index for j in a] == list(range(9))
    gsm = [j.problem.index for j in a if j.program == "tree_of_thought"]
    assert gsm == sorted(gsm) and gsm[0] == 300  # the reporting slice, in order
    timed = serve.build_jobs(mix, 9, seed=3, rate_per_min=30.0)
    arrivals = [j.arrival_s for j in timed]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0 and len(set(arrivals)) == 9
    assert [j.arrival_s for j in serve.build_jobs(mix, 9, seed=3, rate_per_min=30.0)] == arrivals


def test_bad_mix_and_mode_flags():
    with pytest.raises(ValueError, match="unknown program"):
        serve.parse_mix("tree_of_thought:1,chess:2")
    with pytest.raises(ValueError, match="at least 1"):
        serve.parse_mix("game_of_24:0")
    # A mode's --verifier means nothing to Game of 24: it gets the flags it has.
    flags = ["--verifier", "cgee", "--merge-branches", "0.8"]
    assert serve.program_flags(serve.game_of_24, flags) == ["--merge-branches", "0.8"]
    assert serve.program_flags(serve.tree_of_thought, flags) == flags
    # A flag without a value beside a mode's flags: every program keeps what it has (these were once read as
    # pairs, which dropped `--diversify` and the mode's own flags together).
    mixed = ["--diversify", *flags]
    assert serve.program_flags(serve.tree_of_thought, mixed) == mixed
    assert serve.program_flags(serve.self_consistency_verify, mixed) == mixed
    assert serve.program_flags(serve.game_of_24, mixed) == ["--merge-branches", "0.8"]
    # A value the program refuses is an error, not a silently dropped option.
    with pytest.raises(ValueError, match="tree_of_thought: --verifier nonsense"):
        serve.program_flags(serve.tree_of_thought, ["--diversify", "--verifier", "nonsense"])
    with pytest.raises(ValueError, match="--merge-branches"):
        serve.program_flags(serve.game_of_24, ["--merge-branches", "2.5"])


def test_closed_loop_keeps_at_most_n_jobs_in_flight_and_runs_each_once():
    import threading
    import time

    jobs = serve.build_jobs({"game_of_24": 1}, 7, seed=0, rate_per_min=None)
    running, peak, lock = [0], [0], threading.Lock()

    def run_one(job):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        if job.index == 3:
            raise RuntimeError("a failed job")
        return {"correct": job.index % 2 == 0, "prediction": str(job.index)}

    done = serve.run_jobs(run_one, jobs, clients=2)
    assert [d.index for d in done] == list(range(7)) and peak[0] == 2
    assert done[3].row is None and "a failed job" in done[3].error


def _run(mode: str, budget: int, predictions: list[str], server: dict) -> serve.ServeRun:
    done = [
        serve.Done(i, "game_of_24", 0.0, 0.0, 10.0 + i, {"correct": i == 0, "prediction": p})
        for i, p in enumerate(predictions)
    ]
    return serve.ServeRun(mode, budget, 60.0, done, server)


def test_figures_and_comparisons_from_counters():
    model = cost_model.parse(
        {"decode_step": {"1": {"step_ms": 10.0}, "4": {"step_ms": 16.0}}, "prefill": {"a": {"tok_per_s": 1000.0}}}, "t"
    )
    counters = {
        "decode_steps": 5.0,
        "decode_rows": 11.0,
        "decode_steps_by_batch/1": 2.0,
        "decode_steps_by_batch/3": 3.0,
        "prefill_tokens": 500.0,
        "generated_tokens": 120.0,
        "forwards_sampled": 6.0,
        "kv_in_use_sum": 600.0,
        "kv_in_use_max": 180.0,
        "kv_bytes_in_use_sum": 6.0 * 2**20,
        "kv_bytes_in_use_max": 2.0 * 2**20,
        "running_sum": 12.0,
        "running_max": 4.0,
        "waiting_sum": 3.0,
        "waiting_max": 2.0,
        "evicted_tokens": 40.0,
    }
    radix = _run("radix", 1000, ["1", "2", "3"], counters)
    ours = _run("rksc-full", 1000, ["1", "x", "3"], {**counters, "prefill_tokens": 250.0})
    roomy = _run("rksc-full", 4000, ["1", "2", "3"], {**counters, "prefill_tokens": 100.0})
    for run in (radix, ours, roomy):
        run.figures = serve.figures(run, model)
    serve.add_comparisons([radix, ours, roomy])
    f = radix.figures
    assert f["problems_per_min"] == 3.0 and f["generated_tokens_per_s"] == 2.0 and f["accuracy"] == pytest.approx(1 / 3)
    assert (f["latency_p50_s"], f["latency_p95_s"]) == (11.0, pytest.approx(11.9))
    assert (f["kv_in_use_mean"], f["kv_in_use_peak"], f["waiting_mean"]) == (100.0, 180.0, 0.5)
    assert (f["kv_mb_in_use_mean"], f["kv_mb_in_use_peak"], f["running_mean"], f["running_peak"]) == (1, 2, 2, 4)
    assert f["decode_batch_histogram"]["1"] == 2 and f["decode_batch_histogram"]["2-3"] == 3
    # 2 steps at 10 ms, 3 at 14 ms; 500 prompt tokens at 1000/s.
    assert f["projected_s"] == pytest.approx((2 * 10 + 3 * 14 + 500) / 1000)
    assert ours.figures["agreement_with_radix"] == pytest.approx(2 / 3)
    assert ours.figures["projected_problems_per_min_vs_radix"] > 1.0  # fewer prompt tokens to compute
    assert ours.figures["prompt_tokens_recomputed"] == 150.0  # beyond the largest budget's run
    assert "| 1,000 | rksc-full |" in serve.markdown_table([radix, ours])


def test_resume_runs_only_the_jobs_the_journal_lacks(tmp_path: Path, monkeypatch, capsys):
    """The bookkeeping of `--resume` (the kill itself is tested on `bench.compare`, which shares the journal):
    a run stopped after some jobs continues with the others, under every mode, and reports all of them."""
    ran: list[tuple[str, int]] = []
    stop_after: list[int] = [3]

    def fake_run(mode, budget, jobs, args, out, *, segment=None, **_):
        for done, job in enumerate(jobs, 1):
            if len(ran) == stop_after[0]:
                raise KeyboardInterrupt  # killed midway
            ran.append((mode.name, job.index))
            row = {"index": job.index, "prediction": str(job.index), "correct": False}
            segment.row(job.index, dict(index=job.index, program=job.program, queued_s=0.0, started_s=0.0,
                                        finished_s=1.0, row=row), 1.0, {"generated_tokens": 10.0 * done})  # fmt: skip
        segment.end(2.0, {"generated_tokens": 10.0 * len(jobs)})

    monkeypatch.setattr(serve, "run_one_config", fake_run)
    argv = ["--modes", "radix,rksc", "--problems", "4", "--quiet", "--output-dir", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        serve.main(argv)
    assert ran == [("radix", 0), ("radix", 1), ("radix", 2)]
    # The report of what is recorded so far runs nothing and leaves out the mode not yet whole.
    assert serve.main([*argv, "--resume", "--report-only"]) == 0 and len(ran) == 3
    assert json.loads((tmp_path / "serve.json").read_text())["runs"] == []
    assert "3 of 4 jobs recorded: left out of the report" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main([*argv, "--report-only"])
    assert "--report-only reports a journal: give it with --resume" in capsys.readouterr().err
    stop_after[0] = 100
    assert serve.main([*argv, "--resume"]) == 0
    assert ran[3:] == [("radix", 3), ("rksc", 0), ("rksc", 1), ("rksc", 2), ("rksc", 3)]
    record = json.loads((tmp_path / "serve.json").read_text())
    by_mode = {r["mode"]: r for r in record["runs"]}
    assert [d["index"] for d in by_mode["radix"]["done"]] == [0, 1, 2, 3]
    assert by_mode["radix"]["figures"]["server_segments"] == 2 and by_mode["rksc"]["figures"]["server_segments"] == 1
    # The killed segment counts to its last job; the resumed one to its end.
    assert by_mode["radix"]["server"]["generated_tokens"] == 30.0 + 10.0
    assert by_mode["rksc"]["figures"]["agreement_with_radix"] == 1.0
    ran.clear()
    assert serve.main([*argv, "--resume", "--report-only"]) == 0 and ran == []
    assert len(json.loads((tmp_path / "serve.json").read_text())["runs"]) == 2
    with pytest.raises(SystemExit):
        serve.main([*argv, "--resume", "--seed", "1"])
    assert "other settings (seed)" in capsys.readouterr().err


@pytest.mark.server  # by hand: serve starts its server in this process (tests/conftest.py)
def test_a_tiny_serving_run_on_the_real_server(default_model_dir: Path, tmp_path: Path):
    """2 clients, 3 jobs of two programs: each job completes once, the counters add up, and after
    /flush_cache SGLang's strict idle check finds the KV pool whole."""
    args = serve.build_parser().parse_args(
        ["--clients", "2", "--problems", "3", "--mix", "tree_of_thought:1,game_of_24:1", "--quiet",
         "--program-args=--max-tokens 12 --branches 2 --depth 1 --breadth 1 --proposals 1"]
    )  # fmt: skip
    jobs = serve.build_jobs(serve.parse_mix(args.mix), args.problems, args.seed, None)
    mode = modes_mod.resolve(["rksc-full+heads"])[0]

    def check_memory(server) -> None:
        flush_cache(server)
        assert_idle_and_clean(server)

    run = serve.run_one_config(mode, 4096, jobs, args, tmp_path, env=STRICT_MEMORY_ENV, before_stop=check_memory)
    assert sorted(d.index for d in run.done) == [0, 1, 2] and all(d.row is not None for d in run.done), run.done
    f = serve.figures(run, cost_model.load())
    assert f["completed"] == 3 and f["failed"] == 0 and f["problems_per_min"] > 0
    assert sum(f["decode_batch_histogram"].values()) == f["decode_steps"] > 0
    assert f["generated_tokens"] > 0 and 0 < f["kv_in_use_peak"] <= 4096 and f["projected_s"] > 0
    # SmolLM2's uncompressed KV is 30 layers x 3 KV heads x (64 + 64) x 2 bytes per token; rksc-full+heads compresses
    # 40% of the heads to their windows, so the tokens in use hold less than that
    uncompressed = f["kv_in_use_peak"] * 30 * 3 * 128 * 2
    assert 0.6 * uncompressed <= f["kv_mb_in_use_peak"] * 2**20 < uncompressed and f["running_peak"] >= 1


@pytest.mark.server  # by hand: serve starts its server in this process (tests/conftest.py)
def test_a_budget_too_small_for_one_request_is_a_clear_error(default_model_dir: Path, tmp_path: Path, capsys):
    code = serve.main(
        ["--modes", "rksc", "--budgets", "48", "--problems", "1", "--clients", "1", "--mix", "game_of_24:1",
         "--quiet", "--output-dir", str(tmp_path)]
    )  # fmt: skip
    assert code in (1, 2)
    err = capsys.readouterr().err
    assert "budget" in err or "--max-total-tokens" in err, err[-2000:]


def test_help_and_bad_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["--budgets", "0"])
    assert exit_info.value.code == 2 and "--budgets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main(["--cost-model", "/nonexistent.json"])
    assert "cost model" in capsys.readouterr().err
    assert isinstance(serve.build_parser(), argparse.ArgumentParser)
