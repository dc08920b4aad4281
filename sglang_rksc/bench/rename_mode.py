"""Rename a mode in a benchmark folder: its journal (configuration and row keys) and its report.

For rows recorded under a server default that has since changed. The mode's name now means other flags, so its
rows move to the mode that names what ran: `rksc-full` recorded while ASKS's probe was on by default becomes
`rksc-full+probe`. The rename is checked. The new mode's flags must be the recorded ones plus the named flag, at
the value the old default had. Its program flags must be the recorded ones. A resumed run can then add the mode
under its old name and new flags, and each name keeps one meaning.

    python -m sglang_rksc.bench.rename_mode results/answers/scv-fp32 rksc-full rksc-full+probe --was rksc-probe on

The same for a program default that changed under an unchanged flag: `--merge-branches auto` merged
self-consistency's finished solutions until 2026-12-07, and no longer does. Rows from then move to the mode that
names the threshold auto stood for on the journal's model (`--merge-auto`: `rksc-full` becomes `rksc-full@0.9`
on Qwen2.5-Coder-1.5B). Since the flags did not change, a journal left unrenamed would resume under the new
meaning unrefused: every journal in `results/answers` that merged self-consistency was renamed.

    python -m sglang_rksc.bench.rename_mode results/answers/scv-fp32 rksc-full rksc-full@0.9 --merge-auto
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sglang_rksc.bench import modes as modes_mod
from sglang_rksc.bench.journal import FILE_NAME, JournalError, read_records

# A row key is its mode's name and then a repeat (`bench.compare`: `#0`) or a budget and policy
# (`bench.serve`: `@3072`, `@3072/prefix`).
_KEY_TAIL = re.compile(r"(#\d+|@\d+(/.+)?)")


class RenameError(ValueError):
    """A rename that would not name what ran: one line."""


def renamed_key(key: str, old: str, new: str) -> str:
    """`key` under `new` when it is a key of mode `old`, else `key`."""
    if key.startswith(old) and _KEY_TAIL.fullmatch(key[len(old) :]):
        return new + key[len(old) :]
    return key


# `--merge-branches auto` before it stopped merging self-consistency's finished solutions
# (`programs.common.AUTO_MERGES_NOTHING`): rows from then name the threshold auto stood for (`rksc-full@0.9`).
MERGE_AUTO = "merge-auto"


def _server_args_with_default(old: str, new: str, target: modes_mod.Mode, entry: list, was: tuple[str, str]) -> list:
    """`new`'s server flags, checked to be `old`'s recorded ones plus the flag whose default they ran under."""
    _, server_args, program_args = entry
    flag, value = was
    if flag in server_args:
        raise RenameError(f"{old} was launched with {flag} given, so no default of it changed what ran")
    wanted = list(target.server_args)
    if (
        wanted.count(flag) != 1
        or wanted[wanted.index(flag) + 1] != value
        or list(modes_mod.without_flag(target.server_args, flag)) != server_args
    ):
        raise RenameError(
            f"{new}'s flags ({' '.join(target.server_args)}) are not {old}'s recorded ones "
            f"({' '.join(server_args)}) plus {flag} {value}"
        )
    if list(target.program_args) != program_args:
        raise RenameError(f"{new}'s program flags differ from {old}'s recorded ones")
    return wanted


def _program_args_with_auto_named(old: str, new: str, target: modes_mod.Mode, entry: list, model: str | None) -> list:
    """`new`'s program flags, checked to be `old`'s recorded ones with `--merge-branches auto` replaced by the
    threshold auto stood for on the journal's model, when it merged in every program."""
    from sglang_rksc.programs.model_profiles import profile_for

    _, server_args, program_args = entry
    flag = modes_mod.MERGE_FLAG
    if flag not in program_args or program_args[program_args.index(flag) + 1] != "auto":
        raise RenameError(f"{old} did not merge at {flag} auto")
    named = list(program_args)
    named[named.index(flag) + 1] = str(profile_for(model).merge_threshold)
    if list(target.program_args) != named or list(target.server_args) != server_args:
        raise RenameError(
            f"{new} ({' '.join(target.server_args)}; {' '.join(target.program_args)}) is not {old} with auto "
            f"named as the threshold it stood for on {model or 'the default model'} ({' '.join(named)})"
        )
    return named


def rename_records(records: list[dict[str, Any]], old: str, new: str, was: tuple[str, str]) -> list[dict[str, Any]]:
    """The journal's records with mode `old` under mode `new`: run while server flag `was[0]` defaulted to
    `was[1]`, or (`was` `("merge-auto", "")`) while `--merge-branches auto` merged in every program."""
    config = records[0]["config"]
    entries = config.get("modes") or []
    names = [entry[0] for entry in entries]
    if old not in names:
        raise RenameError(f"the journal has no mode {old} (it has {', '.join(names) or 'none'})")
    if new in names:
        raise RenameError(f"the journal already has a mode {new}")
    target = modes_mod.resolve([new])[0]
    entry = entries[names.index(old)]
    if was[0] == MERGE_AUTO:
        server_args = entry[1]
        program_args = _program_args_with_auto_named(old, new, target, entry, config.get("model"))
    else:
        server_args, program_args = _server_args_with_default(old, new, target, entry, was), entry[2]
    out = [{**records[0], "config": {**config, "modes": [list(e) for e in entries]}}]
    out[0]["config"]["modes"][names.index(old)] = [new, server_args, program_args]
    for record in records[1:]:
        if "key" in record:
            record = {**record, "key": renamed_key(record["key"], old, new)}
        out.append(record)
    return out


def _rename_report(folder: Path, old: str, new: str) -> list[Path]:
    """The report's own record of the mode, renamed; Markdown written again from it (compare) or its table
    cells renamed (serve). The command line it quotes stays: it is what ran."""
    written = []
    compare_json, serve_json = folder / "bench.json", folder / "serve.json"
    if compare_json.exists():
        data = json.loads(compare_json.read_text())
        data["modes"] = [new if name == old else name for name in data.get("modes", [])]
        for item in data.get("summaries", []) + data.get("runs", []):
            if item.get("mode") == old:
                item["mode"] = new
        compare_json.write_text(json.dumps(data, indent=1, default=str))
        from sglang_rksc.bench import compare
        from sglang_rksc.runtime import cost_model

        compare.rerender(compare_json, cost_model.load())  # the shipped model, as the reports were written
        written += [compare_json, folder / "bench.md"]
    if serve_json.exists():
        data = json.loads(serve_json.read_text())
        for run in data.get("runs", []):
            if run.get("mode") == old:
                run["mode"] = new
        serve_json.write_text(json.dumps(data, indent=1, default=str))
        markdown = folder / "serve.md"
        if markdown.exists():
            markdown.write_text(markdown.read_text().replace(f"| {old} |", f"| {new} |"))
        written += [serve_json, markdown]
    return written


def rename(folder: Path, old: str, new: str, was: tuple[str, str]) -> list[Path]:
    """Rename `old` to `new` in `folder`'s journal and report; the files written."""
    path = folder / FILE_NAME
    records = rename_records(read_records(path), old, new, was)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return [path, *_rename_report(folder, old, new)]


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.bench.rename_mode",
        description="Move a mode's recorded rows to the mode that names what ran, after a server default changed.",
    )
    parser.add_argument("folder", type=Path, help="a bench.compare or bench.serve output folder (with journal.jsonl)")
    parser.add_argument("old", help="the mode's recorded name")
    parser.add_argument("new", help="the mode that names what ran (its flags: the recorded ones plus --was)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--was",
        nargs=2,
        metavar=("FLAG", "VALUE"),
        help="the default the rows ran under: a server flag without its dashes and its value (rksc-probe on)",
    )
    what.add_argument(
        "--merge-auto",
        action="store_true",
        help="the rows ran when --merge-branches auto merged self-consistency's solutions too: the new mode names "
        "the threshold it stood for on the journal's model (rksc-full@0.9)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    was = (MERGE_AUTO, "") if args.merge_auto else ("--" + args.was[0].lstrip("-"), args.was[1])
    try:
        written = rename(args.folder, args.old, args.new, was)
    except (RenameError, JournalError, ValueError, OSError) as exc:
        parser.error(str(exc))
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
