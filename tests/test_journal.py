"""The benchmarks' journal: what a resumed run reads back, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_rksc.bench.journal import Journal, JournalError, combine_counters, read_records

CONFIG = {"program": "tree_of_thought", "start": 300, "modes": [("radix", ["--x"], [])]}


def test_rows_and_segments_add_up_across_a_resume(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    first = Journal(path, CONFIG, resume=False)
    seg = first.segment("radix#0")
    seg.row(300, {"index": 300, "prediction": "4"}, 10.0, {"generated_tokens": 50.0, "kv_in_use_max": 7.0})
    seg.row(301, {"index": 301, "prediction": "5"}, 25.0, {"generated_tokens": 120.0, "kv_in_use_max": 9.0})
    # Killed here: no `end` record. The resumed run reads both rows and the segment's last counters.
    again = Journal(path, CONFIG, resume=True)
    assert again.done("radix#0") == {300, 301} and again.done("radix#1") == set()
    seg2 = again.segment("radix#0")
    assert seg2.number != seg.number
    seg2.row(302, {"index": 302, "prediction": "6"}, 4.0, {"generated_tokens": 30.0, "kv_in_use_max": 3.0})
    seg2.end(5.0, {"generated_tokens": 31.0, "kv_in_use_max": 3.0})
    totals = Journal(path, CONFIG, resume=True).totals("radix#0")
    assert sorted(totals.rows) == [300, 301, 302]
    assert totals.seconds == 30.0 and totals.segments == 2
    assert totals.server == {"generated_tokens": 151.0, "kv_in_use_max": 9.0}


def test_a_line_cut_short_by_a_kill_is_dropped_and_its_problem_runs_again(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    seg = Journal(path, CONFIG, resume=False).segment("k")
    seg.row(1, {"index": 1}, 1.0, {})
    seg.row(2, {"index": 2}, 2.0, {})
    text = path.read_text()
    path.write_text(text[: len(text) - 10])  # the last line half written
    journal = Journal(path, CONFIG, resume=True)
    assert journal.done("k") == {1}
    journal.segment("k").row(2, {"index": 2}, 1.0, {})
    assert [json.loads(line)["kind"] for line in path.read_text().splitlines()] == ["config", "row", "row"]


def test_another_configuration_is_refused_and_a_fresh_run_keeps_the_old_journal(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    Journal(path, CONFIG, resume=False).segment("k").row(1, {"index": 1}, 1.0, {})
    with pytest.raises(JournalError, match="other settings \\(start\\)"):
        Journal(path, {**CONFIG, "start": 400}, resume=True)
    fresh = Journal(path, CONFIG, resume=False)
    assert fresh.done("k") == set()
    assert (tmp_path / "journal.jsonl.old").exists()
    path.write_text("not json\n" + '{"kind": "row"}\n')
    with pytest.raises(JournalError, match="line 1 is not JSON"):
        Journal(path, CONFIG, resume=True)


def test_a_resumed_run_may_add_or_leave_out_a_mode_but_not_change_one(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    Journal(path, CONFIG, resume=False).segment("radix#0").row(1, {"index": 1}, 1.0, {})
    wider = {**CONFIG, "modes": [("radix", ["--x"], []), ("rksc-full", ["--y"], ["--z"])]}
    added = Journal(path, wider, resume=True)
    assert added.done("radix#0") == {1} and added.done("rksc-full#0") == set()
    added.segment("rksc-full#0").row(1, {"index": 1}, 1.0, {})
    # Naming only rksc-full leaves radix out: its rows stay, and the configuration keeps it, first.
    narrow = Journal(path, {**CONFIG, "modes": [("rksc-full", ["--y"], ["--z"])]}, resume=True)
    assert narrow.done("radix#0") == {1} and narrow.done("rksc-full#0") == {1}
    config = read_records(path)[0]["config"]
    assert [mode[0] for mode in config["modes"]] == ["radix", "rksc-full"]
    # A mode under a recorded name with other flags is another mode: refused, the journal untouched.
    changed = {**CONFIG, "modes": [("radix", ["--x"], []), ("rksc-full", ["--other"], ["--z"])]}
    with pytest.raises(JournalError, match="other settings \\(modes\\); .*add modes or leave some out, not change"):
        Journal(path, changed, resume=True)
    with pytest.raises(JournalError, match="other settings \\(modes, start\\)"):
        Journal(path, {**changed, "start": 400}, resume=True)
    assert read_records(path)[0]["config"] == config
    assert Journal(path, wider, resume=True).done("rksc-full#0") == {1}


def test_peaks_take_the_largest_and_the_tree_the_last():
    parts = [{"a": 1.0, "x_max": 5.0, "tree_tokens": 10.0}, {"a": 2.0, "x_max": 3.0, "tree_tokens": 4.0}]
    assert combine_counters(parts) == {"a": 3.0, "x_max": 5.0, "tree_tokens": 4.0}


def test_a_growable_setting_may_be_raised_on_resume_but_not_lowered(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    config = {**CONFIG, "num_problems": 8}
    Journal(path, config, resume=False, growable=("num_problems",)).segment("k").row(300, {"index": 300}, 1.0, {})
    grown = Journal(path, {**config, "num_problems": 20}, resume=True, growable=("num_problems",))
    assert grown.done("k") == {300}
    assert read_records(path)[0]["config"]["num_problems"] == 20
    # Lowered, or raised where the benchmark names nothing growable, or given as something else: refused.
    with pytest.raises(JournalError, match="other settings \\(num_problems\\); .*raise num_problems, not change"):
        Journal(path, config, resume=True, growable=("num_problems",))
    with pytest.raises(JournalError, match="other settings \\(num_problems\\)"):
        Journal(path, {**config, "num_problems": 30}, resume=True)
    with pytest.raises(JournalError, match="other settings \\(num_problems\\)"):
        Journal(path, {**config, "num_problems": "30"}, resume=True, growable=("num_problems",))
    assert read_records(path)[0]["config"]["num_problems"] == 20
