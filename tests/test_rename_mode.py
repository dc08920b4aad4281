"""Renaming a mode in a journal after a server default changed: checked against what ran, rows kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_rksc.bench import modes, rename_mode
from sglang_rksc.bench.journal import Journal, JournalError, read_records

# rksc-full's flags before the probe had a flag of its own in the mode (it was on by default).
OLD_FULL = ["--radix-cache-backend", "rksc", "--rksc-semantic", "on", "--radix-eviction-policy", "rsbcm",
            "--rksc-reuse", "on", "--rksc-span-embeddings", "on"]  # fmt: skip
PROGRAM = list(modes.MODES["rksc-full"].program_args)
WAS = ("--rksc-probe", "on")


def _journal(path: Path, full_args: list[str]) -> dict:
    config = {"program": "self_consistency_verify", "start": 300, "repeats": 1}
    config["modes"] = [["radix", ["--radix-cache-backend", "default"], []], ["rksc-full", full_args, PROGRAM]]
    journal = Journal(path / "journal.jsonl", config, resume=False)
    for key in ("radix#0", "rksc-full#0"):
        seg = journal.segment(key)
        seg.row(300, {"index": 300, "prediction": key}, 1.0, {"forks_probe": 1.0})
        seg.end(2.0, {"forks_probe": 1.0})
    return config


def _mode(config: dict, name: str) -> list:
    return [[m, list(s), list(p)] for m, s, p in config["modes"] if m == name]


def test_the_rows_move_to_the_mode_that_names_what_ran_and_the_old_name_takes_new_rows(tmp_path: Path):
    config = _journal(tmp_path, OLD_FULL)
    before = read_records(tmp_path / "journal.jsonl")
    rename_mode.rename(tmp_path, "rksc-full", "rksc-full+probe", WAS)
    after = read_records(tmp_path / "journal.jsonl")
    assert [r.get("key") for r in after[1:]] == [
        "radix#0", "radix#0", "rksc-full+probe#0", "rksc-full+probe#0"
    ]  # fmt: skip
    assert [{k: v for k, v in r.items() if k != "key"} for r in after[1:]] == [
        {k: v for k, v in r.items() if k != "key"} for r in before[1:]
    ]
    stored = after[0]["config"]["modes"]
    assert stored[1] == ["rksc-full+probe", list(modes.MODES["rksc-full+probe"].server_args), PROGRAM]
    # A resume now adds rksc-full (the probe off) beside the renamed rows, and runs it on their problem.
    wanted = {**config, "modes": [["radix", ["--radix-cache-backend", "default"], []]]}
    wanted["modes"].append(["rksc-full", list(modes.MODES["rksc-full"].server_args), PROGRAM])
    resumed = Journal(tmp_path / "journal.jsonl", wanted, resume=True)
    assert resumed.done("rksc-full+probe#0") == {300} and resumed.done("rksc-full#0") == set()


def test_before_the_rename_a_resume_under_the_new_flags_is_refused(tmp_path: Path):
    """The reason for naming the probe in the mode: the old rows would otherwise count as the new mode's."""
    config = _journal(tmp_path, OLD_FULL)
    wanted = {**config, "modes": [["rksc-full", list(modes.MODES["rksc-full"].server_args), PROGRAM]]}
    with pytest.raises(JournalError, match="other settings"):
        Journal(tmp_path / "journal.jsonl", wanted, resume=True)


@pytest.mark.parametrize(
    ("flags", "new", "was", "match"),
    [
        (OLD_FULL, "rksc-asks+probe", WAS, "are not rksc-full's recorded ones"),
        (OLD_FULL, "rksc-full+probe", ("--rksc-probe", "off"), "plus --rksc-probe off"),
        ([*OLD_FULL, "--rksc-probe", "on"], "rksc-full+probe", WAS, "was launched with --rksc-probe given"),
        (OLD_FULL, "radix", WAS, "already has a mode radix"),
    ],
)
def test_a_rename_that_would_not_name_what_ran_is_refused(tmp_path: Path, flags, new, was, match):
    _journal(tmp_path, flags)
    text = (tmp_path / "journal.jsonl").read_text()
    with pytest.raises(rename_mode.RenameError, match=match):
        rename_mode.rename(tmp_path, "rksc-full", new, was)
    assert (tmp_path / "journal.jsonl").read_text() == text


def test_keys_of_a_serve_journal_and_of_other_modes_sharing_a_prefix():
    assert rename_mode.renamed_key("rksc-full@3072", "rksc-full", "x") == "x@3072"
    assert rename_mode.renamed_key("rksc-full@3072/prefix", "rksc-full", "x") == "x@3072/prefix"
    assert rename_mode.renamed_key("rksc-full#1", "rksc-full", "x") == "x#1"
    # Keys of other modes whose names begin with the renamed one's stay.
    assert rename_mode.renamed_key("rksc-full+heads#0", "rksc-full", "x") == "rksc-full+heads#0"
    assert rename_mode.renamed_key("rksc-full+drafts@3072", "rksc-full", "x") == "rksc-full+drafts@3072"
    assert rename_mode.renamed_key("rksc-asks@0.9#0", "rksc-asks", "x") == "rksc-asks@0.9#0"


def test_the_report_is_renamed_and_written_again(tmp_path: Path):
    _journal(tmp_path, OLD_FULL)
    (tmp_path / "serve.json").write_text(json.dumps({"runs": [{"mode": "rksc-full"}, {"mode": "radix"}]}))
    (tmp_path / "serve.md").write_text("| 3,072 | rksc-full | one server |\n| 3,072 | rksc-full+heads | x |\n")
    rename_mode.rename(tmp_path, "rksc-full", "rksc-full+probe", WAS)
    assert [r["mode"] for r in json.loads((tmp_path / "serve.json").read_text())["runs"]] == [
        "rksc-full+probe", "radix"
    ]  # fmt: skip
    assert (tmp_path / "serve.md").read_text().splitlines() == [
        "| 3,072 | rksc-full+probe | one server |", "| 3,072 | rksc-full+heads | x |"
    ]  # fmt: skip


def _merge_journal(path: Path, model: str, program_args: list[str]) -> None:
    config = {"program": "self_consistency_verify", "model": model, "start": 300, "repeats": 1}
    config["modes"] = [["rksc-full", list(modes.MODES["rksc-full"].server_args), program_args]]
    journal = Journal(path / "journal.jsonl", config, resume=False)
    seg = journal.segment("rksc-full#0")
    seg.row(300, {"index": 300, "prediction": "18"}, 1.0, {})
    seg.end(2.0, {})


def test_rows_run_when_auto_merged_self_consistency_move_to_the_threshold_it_stood_for(tmp_path: Path):
    _merge_journal(tmp_path, "qwen2.5-coder-1.5b", PROGRAM)
    rename_mode.main([str(tmp_path), "rksc-full", "rksc-full@0.9", "--merge-auto"])
    after = read_records(tmp_path / "journal.jsonl")
    assert after[0]["config"]["modes"][0] == [
        "rksc-full@0.9", list(modes.MODES["rksc-full"].server_args), ["--verifier", "cgee", "--merge-branches", "0.9"]
    ]  # fmt: skip
    assert [r.get("key") for r in after[1:]] == ["rksc-full@0.9#0", "rksc-full@0.9#0"]


@pytest.mark.parametrize(
    ("model", "program_args", "new", "match"),
    [
        ("smollm2-135m", PROGRAM, "rksc-full@0.9", "stood for on smollm2-135m"),  # auto was 0.8 there
        ("qwen2.5-coder-1.5b", ["--verifier", "cgee", "--merge-branches", "0.8"], "rksc-full@0.8", "did not merge"),
        ("qwen2.5-coder-1.5b", PROGRAM, "rksc-merge@0.9", "is not rksc-full with auto named"),
    ],
)
def test_a_merge_auto_rename_that_would_not_name_what_ran_is_refused(tmp_path: Path, model, program_args, new, match):
    _merge_journal(tmp_path, model, program_args)
    text = (tmp_path / "journal.jsonl").read_text()
    with pytest.raises(rename_mode.RenameError, match=match):
        rename_mode.rename(tmp_path, "rksc-full", new, (rename_mode.MERGE_AUTO, ""))
    assert (tmp_path / "journal.jsonl").read_text() == text
