"""Run one program under several server modes, side by side, and report them in one table.

Every mode runs the same program on the same problems with the same sampling
(greedy by default), on a fresh server of the same build; modes are
interleaved (the order reverses each repeat) so that machine drift shows up
as spread rather than as a difference between modes. Ratios are taken against
`radix` and `no-cache` from the same comparison.

    python -m sglang_rksc.bench.compare --program tree_of_thought --start 300 --num-problems 20

Writes bench.json, bench.md and bench.png under --output-dir, and journal.jsonl as it goes: every finished
problem is appended there, so that `--resume` continues a killed run without repeating or losing one. Long
answer runs go by `--chunk`: all modes on the first K problems, then on the next K, so that a run stopped
after any chunk compares every mode on the same problems.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sglang_rksc.bench import modes as modes_mod
from sglang_rksc.bench import server_stats
from sglang_rksc.bench.journal import FILE_NAME, Journal, JournalError, by_index
from sglang_rksc.bench.report import Run, add_speedups, markdown_table, summarize_mode, write_chart
from sglang_rksc.programs import common, game_of_24, self_consistency_verify, tree_of_thought
from sglang_rksc.runtime import cost_model
from sglang_rksc.runtime.server_process import LaunchedServer, ServerStartError, exit_on_sigterm

PROGRAMS: dict[str, Any] = {p.NAME: p for p in (tree_of_thought, self_consistency_verify, game_of_24)}
GSM8K_CALIBRATION_END = 300  # problems 0-299 tune thresholds; 300+ are reported


def check_slice(program: str, start: int, count: int) -> str:
    """Which GSM8K slice the problems are in; a slice that mixes both is refused."""
    if program == game_of_24.NAME:
        return "game24"
    if start < GSM8K_CALIBRATION_END < start + count:
        raise ValueError(
            f"problems {start}-{start + count - 1} mix the calibration slice (0-299) and the reporting slice (300+)"
        )
    return "calibration" if start < GSM8K_CALIBRATION_END else "reporting"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.bench.compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--program", choices=sorted(PROGRAMS), default=tree_of_thought.NAME, help="program to run")
    parser.add_argument(
        "--start",
        type=common.non_negative_int,
        default=300,
        help="first problem (GSM8K: 0-299 calibrate, 300+ report; a run may not mix them)",
    )
    parser.add_argument("--num-problems", type=common.positive_int, default=20, help="how many problems")
    parser.add_argument(
        "--modes",
        default=",".join(modes_mod.DEFAULT_MODES),
        help=f"comma-separated modes, from: {', '.join(modes_mod.MODES)} "
        "(rksc-asks@T[/P] sets ASKS thresholds, rksc-merge@T and rksc-full@T the merge threshold, "
        "self-consistency included; +drafts: with --rksc-drafts on)",
    )
    parser.add_argument(
        "--repeats",
        type=common.positive_int,
        default=2,
        help="runs of every mode, interleaved; the spread shows machine noise",
    )
    parser.add_argument(
        "--temperature",
        type=common.temperature,
        default=0.0,
        help="sampling temperature given to the program; 0 (greedy) makes agreement meaningful",
    )
    parser.add_argument(
        "--program-args",
        default="",
        help="the program's own flags as one quoted string after an equals sign, "
        'e.g. --program-args="--branches 3 --diversify"',
    )
    parser.add_argument("--parallel", type=common.positive_int, default=4, help="problems in flight at once")
    parser.add_argument(
        "--server-args", default="", help='extra flags for every mode\'s server, e.g. "--max-total-tokens 4096"'
    )
    parser.add_argument(
        "--model", help="a named embedded model for every mode's server (default: smollm2-135m; see the launcher)"
    )
    parser.add_argument("--chat-template", default="auto", help="SGLang frontend chat template ('auto': see programs)")
    parser.add_argument(
        "--output-dir", help="where bench.json, bench.md, bench.png go (default results/bench/<program>)"
    )
    parser.add_argument(
        "--cost-model",
        help="GPU cost model for the projection (JSON written by gpu_costmodel.py); default: H100, Qwen2.5-7B shapes",
    )
    parser.add_argument(
        "--chunk",
        type=common.positive_int,
        help="run every mode on this many problems before the next ones (a fresh server per mode and chunk); "
        "default: all at once",
    )
    parser.add_argument(
        "--audit-rate",
        type=float,
        default=0.0,
        help="audit this share of each mode's generations (--rksc-audit-rate; the log per mode and repeat goes to "
        "--output-dir as audits-<mode>-<repeat>.jsonl, for sglang_rksc.tools.audits.replay); changes no output, "
        "so a resumed run may add it",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run whose journal.jsonl is in --output-dir (the same settings; it may add modes, "
        "or leave recorded ones out, whose rows stay, and raise --num-problems to grow the slice): "
        "only the problems it has not recorded run",
    )
    parser.add_argument(
        "--rerender",
        type=Path,
        metavar="BENCH_JSON",
        help="run nothing: write the report of an earlier comparison again from its bench.json",
    )
    return parser


def server_log_path(log_dir: Path, mode_name: str, run: int, kind: str = "server", suffix: str = "log") -> Path:
    """One log file per run (`run`: its repeat, or its budget in bench.serve; `kind` "audits": its audit log);
    a mode name like rksc-asks@0.9/0.95 must not make a sub-folder."""
    return log_dir / f"{kind}-{mode_name.replace('/', '_')}-{run}.{suffix}"


def mode_program_options(program: Any, args: argparse.Namespace, mode: modes_mod.Mode) -> argparse.Namespace:
    """The program's options under a mode: the common ones, then the mode's own flags."""
    try:
        options = common.program_options(program, [*shlex.split(args.program_args), *mode.program_args])
    except ValueError as exc:
        raise ValueError(f"mode {mode.name} needs program flags {' '.join(mode.program_args)}: {exc}") from None
    options.temperature = args.temperature
    return options


def run_key(mode_name: str, repeat: int) -> str:
    """A run's key in the journal."""
    return f"{mode_name}#{repeat}"


def run_mode(
    mode: modes_mod.Mode,
    program: Any,
    problems: list,
    options: argparse.Namespace,
    args: argparse.Namespace,
    repeat: int,
    log_dir: Path,
    journal: Journal,
) -> None:
    """A fresh server for this mode, the program once over `problems`, each finished problem journaled
    with the server's time and counters so far."""
    model = ["--model", args.model] if args.model else []
    server_args = [*mode.server_args, *model, "--enable-metrics", *shlex.split(args.server_args)]
    if args.audit_rate > 0:
        audit_log = server_log_path(log_dir, mode.name, repeat, kind="audits", suffix="jsonl")
        server_args += ["--rksc-audit-rate", str(args.audit_rate), "--rksc-audit-log", str(audit_log)]
    log_path = server_log_path(log_dir, mode.name, repeat)
    segment = journal.segment(run_key(mode.name, repeat))
    with LaunchedServer(server_args, log_path=log_path) as server:
        backend = common.make_backend(server.url, args.chat_template)
        before = server_stats.snapshot(server.url)
        started = time.perf_counter()

        def record(row: dict[str, Any]) -> None:
            segment.row(row["index"], row, *server_stats.since(server.url, before, started))

        program.run(backend, problems, options, parallel=args.parallel, progress_bar=True, on_row=record)
        segment.end(*server_stats.since(server.url, before, started))


# A resumed run may raise the number of problems: the slice grows from the same start, the rows recorded stay,
# and the chunks stay aligned with those of the run it continues.
GROWABLE = ("num_problems",)


def journal_config(args: argparse.Namespace, modes: list[modes_mod.Mode]) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (not --resume, --output-dir or --cost-model)."""
    kept = ("program", "start", "num_problems", "repeats", "temperature", "program_args", "parallel")
    return {
        **{k: getattr(args, k) for k in kept},
        "modes": [(m.name, list(m.server_args), list(m.program_args)) for m in modes],
        "server_args": args.server_args,
        "model": args.model,
        "chat_template": args.chat_template,
        "chunk": args.chunk,
    }


def collect_runs(
    journal: Journal, modes: list[modes_mod.Mode], repeats: int, order: list[int], log_dir: Path
) -> list[Run]:
    """The journal's runs, one per mode and repeat, rows in the problems' order."""
    runs = []
    for repeat in range(repeats):
        for mode in modes:
            totals = journal.totals(run_key(mode.name, repeat))
            log = str(server_log_path(log_dir, mode.name, repeat))
            runs.append(Run(mode.name, repeat, totals.seconds, by_index(totals.rows, order), totals.server, log))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.audit_rate <= 1.0:
        parser.error(f"--audit-rate must be a share in [0, 1], got {args.audit_rate}")
    try:
        model = cost_model.load(args.cost_model)
    except cost_model.CostModelError as exc:
        parser.error(str(exc))
    if args.rerender:
        return rerender(args.rerender, model)
    try:
        modes = modes_mod.resolve([m.strip() for m in args.modes.split(",") if m.strip()])
        slice_name = check_slice(args.program, args.start, args.num_problems)
        program = PROGRAMS[args.program]
        options = common.program_options(program, shlex.split(args.program_args))
        mode_options = {m.name: mode_program_options(program, args, m) for m in modes}
        problems = program.load_problems(args.start, args.num_problems)
    except ValueError as exc:
        parser.error(str(exc))
    options.temperature = args.temperature
    out_dir = Path(args.output_dir or f"results/bench/{args.program}")
    out_dir.mkdir(parents=True, exist_ok=True)

    try:
        journal = Journal(out_dir / FILE_NAME, journal_config(args, modes), resume=args.resume, growable=GROWABLE)
    except JournalError as exc:
        parser.error(str(exc))
    chunk = args.chunk or len(problems)
    chunks = [problems[i : i + chunk] for i in range(0, len(problems), chunk)]
    total, step = len(chunks) * len(modes) * args.repeats, 0
    for part in chunks:
        for repeat in range(args.repeats):
            order = modes if repeat % 2 == 0 else list(reversed(modes))
            for mode in order:
                step += 1
                done = journal.done(run_key(mode.name, repeat))
                todo = [p for p in part if p.index not in done]
                if not todo:
                    continue
                print(
                    f"[{step}/{total}] repeat {repeat + 1}, mode {mode.name}, problems {todo[0].index}-"
                    f"{todo[-1].index} ({len(todo)}): {mode.description}",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    run_mode(mode, program, todo, mode_options[mode.name], args, repeat, out_dir, journal)
                except ServerStartError as exc:
                    print(f"error: mode {mode.name}: {exc}", file=sys.stderr)
                    return 1
                totals = journal.totals(run_key(mode.name, repeat))
                print(
                    f"    {len(totals.rows)} problems so far in {totals.seconds:.1f} s, "
                    f"{totals.server.get('generated_tokens', 0):.0f} tokens generated, "
                    f"{totals.server.get('cached_tokens', 0):.0f}/{totals.server.get('prompt_tokens', 0):.0f} "
                    "prompt tokens from cache",
                    file=sys.stderr,
                    flush=True,
                )
    runs = collect_runs(journal, modes, args.repeats, [p.index for p in problems], out_dir)

    command = "python -m sglang_rksc.bench.compare " + shlex.join(argv if argv is not None else sys.argv[1:])
    option_text = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(options).items()))
    heading = (
        f"{args.program} on {args.num_problems} problems from {args.start} ({slice_name} slice), "
        f"{args.repeats} interleaved repeats, program options: {option_text}, parallel {args.parallel}"
        + (f", all modes on {args.chunk} problems at a time (a fresh server per mode and chunk)" if args.chunk else "")
    )
    record = {
        "command": command,
        "heading": heading,
        "modes": [m.name for m in modes],
        "program": args.program,
        "slice": slice_name,
        "start": args.start,
        "num_problems": args.num_problems,
        "program_options": vars(options),
        "parallel": args.parallel,
        "server_args": args.server_args,
    }
    write_report(out_dir, {**record, "cost_model": model.source}, modes, runs, model)
    return 0


def write_report(
    out_dir: Path, record: dict[str, Any], modes: list[modes_mod.Mode], runs: list[Run], model: cost_model.CostModel
) -> None:
    """Summaries, ratios, the Markdown table, the JSON record and the chart, from the runs."""
    reference = [r for r in runs if r.mode == modes_mod.REFERENCE]
    summaries = [summarize_mode(m, [r for r in runs if r.mode == m.name], reference, model) for m in modes]
    add_speedups(summaries)
    note = (
        f"GPU-projected s: the same run's token accounting (decode steps by batch size, drafts' verify steps by "
        f"rows x tokens per row, prompt tokens computed) costed with {model.name} ({model.source}); a projection, "
        f"not a GPU run. Drafts: tokens emitted per row and step (accepted drafted tokens per drafted row), and "
        f"the share of drafted tokens accepted by source; '-' for a mode without drafts."
    )
    markdown = f"`{record['command']}`\n\n{record['heading']}\n\n{markdown_table(summaries)}\n\n{note}\n"
    (out_dir / "bench.md").write_text(markdown)
    full = {**record, "summaries": [asdict(s) for s in summaries], "runs": [asdict(r) for r in runs]}
    (out_dir / "bench.json").write_text(json.dumps(full, indent=1, default=str))
    written = [out_dir / "bench.md", out_dir / "bench.json"]
    if runs:
        write_chart(summaries, out_dir / "bench.png", record["heading"])
        written.append(out_dir / "bench.png")
    print(markdown)
    print("wrote " + ", ".join(map(str, written)))


def rerender(path: Path, model: cost_model.CostModel) -> int:
    """Write the report of an earlier comparison again from its bench.json (e.g. after new columns)."""
    data = json.loads(path.read_text())
    runs = [Run(**r) for r in data["runs"]]
    names = data.get("modes") or [s["mode"] for s in data["summaries"]]
    heading = data.get("heading") or (
        f"{data['program']} on {data['num_problems']} problems from {data['start']} ({data['slice']} slice), "
        f"{1 + max((r.repeat for r in runs), default=0)} interleaved repeats, program options: "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(data["program_options"].items()))
        + f", parallel {data['parallel']}"
    )
    record = {k: v for k, v in data.items() if k not in ("summaries", "runs")}
    record.update(heading=heading, modes=names)
    write_report(path.parent, record, modes_mod.resolve(names), runs, model)
    return 0


if __name__ == "__main__":
    exit_on_sigterm()  # a killed run stops its server and can be resumed
    sys.exit(main())
