"""What every program shares: the endpoint, the chat template, the shared flags and the run, token accounting,
output for people."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from sglang_rksc.programs import aggregate, verification


class Program(Protocol):
    """What a program module provides; `program_main` and the benchmark drive it."""

    NAME: str
    DESCRIPTION: str

    def add_arguments(self, parser: argparse._ActionsContainer) -> None:
        """The program's own flags (branches, samples, ...), with defaults."""

    def load_problems(self, start: int, count: int) -> Sequence[Any]: ...

    def run(
        self,
        backend: Any,
        problems: Sequence[Any],
        options: argparse.Namespace,
        *,
        parallel: int,
        progress_bar: bool,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """One row per problem, in order, each with index, gold, prediction, correct and tokens; each row
        also goes to `on_row` as soon as its problem and those before it are done."""

    def describe_row(self, row: Mapping[str, Any]) -> str: ...

    def summarize(self, rows: Sequence[Mapping[str, Any]], options: argparse.Namespace) -> dict[str, Any]:
        """Program-specific figures beside the common ones (baselines, verification counts)."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def temperature(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 2], got {value}")
    return value


def add_endpoint_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("endpoint")
    group.add_argument(
        "--url",
        help="an SGLang server to run against (stock SGLang too), e.g. http://127.0.0.1:30000; "
        "when omitted, the embedded default server (sglang-rksc launcher, default model) is started and stopped",
    )
    group.add_argument(
        "--model",
        help="a named embedded model for the embedded server: smollm2-135m (the default), qwen2.5-coder-1.5b "
        "(bash scripts/setup.sh --quality-model), qwen2.5-coder-0.5b; ignored with --url",
    )
    group.add_argument(
        "--server-args",
        default="",
        help='extra flags for the embedded server, as one quoted string (e.g. "--disable-radix-cache"); '
        "ignored with --url",
    )
    group.add_argument(
        "--server-log", help="file for the embedded server's log (default: a temporary file, printed on failure)"
    )
    group.add_argument(
        "--chat-template",
        default="auto",
        help="SGLang frontend chat template; 'auto' picks chatml for SmolLM2 and SGLang's own detection otherwise",
    )


def _check_reachable(url: str) -> None:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10) as resp:
            if resp.status == 200:
                return
    except (urllib.error.URLError, OSError) as exc:
        raise SystemExit(f"error: no SGLang server answers at {url} ({exc})") from exc
    raise SystemExit(f"error: the SGLang server at {url} is not healthy")


@contextmanager
def endpoint(args: argparse.Namespace) -> Iterator[str]:
    """The URL to run against: `--url`, or an embedded server for the duration."""
    if args.url:
        _check_reachable(args.url)
        yield args.url.rstrip("/")
        return
    from sglang_rksc.runtime.server_process import LaunchedServer, ServerStartError

    model = ["--model", args.model] if getattr(args, "model", None) else []
    server = LaunchedServer([*model, *shlex.split(args.server_args)], log_path=args.server_log)
    print(f"starting the embedded sglang-rksc server (log: {server.log_path}) ...", file=sys.stderr, flush=True)
    try:
        server.start()
    except ServerStartError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"embedded server ready at {server.url}", file=sys.stderr, flush=True)
    try:
        yield server.url
    finally:
        server.stop()


def make_backend(url: str, chat_template: str = "auto") -> Any:
    """An `sgl.RuntimeEndpoint` with the chat template the model was trained with. Every process that runs
    our programs gets one, so it is where their executors get the end that cannot hang (`lang.executors`) and
    their batches go one prompt at a time behind SGLang's router (`lang.router`)."""
    import sglang as sgl

    from sglang_rksc.lang import executors, router

    executors.install()
    router.install()
    backend = sgl.RuntimeEndpoint(url)
    if chat_template == "auto":
        if re.search(r"smollm", backend.get_model_name(), re.IGNORECASE):
            chat_template = "chatml"  # SGLang's detection does not know SmolLM2
        else:
            return backend
    from sglang.lang.chat_template import get_chat_template

    backend.chat_template = get_chat_template(chat_template)
    return backend


class ProgramError(RuntimeError):
    """A request of an SGLang program failed on the server."""


def sync(state: Any) -> None:
    """Wait until `state`'s queued work is done; raise if a request of it failed.

    SGLang's `state.sync()` waits forever once a request of the state failed
    (its worker thread stops, later work is never taken off the queue).
    """
    executor = state.stream_executor
    while executor.queue.unfinished_tasks and not executor.is_finished:
        time.sleep(0.005)
    error = state.error()
    if error is not None:
        raise ProgramError(f"a request of the program failed: {error}") from error


def fork(state: Any, size: int) -> Any:
    """`state.fork(size)`, with the shared prefix committed to the server's cache first.

    SGLang's frontend commits the prefix (a `max_new_tokens=0` request) only
    when the state's text is already materialised at fork time; right after
    `s += ...` it often is not yet, and the branches then race to prefill the
    same prefix. Syncing first makes the commit happen every time.
    """
    sync(state)
    return state.fork(size)


def mark_branches(states: Sequence[Any], mark: str, enabled: bool) -> None:
    """Mark these states' branches `rejected` or `finished` (RSBCM) when `--mark-branches` is on."""
    if enabled and states:
        from sglang_rksc.lang.mark import mark_branch

        mark_branch(list(states), mark)


@dataclass(frozen=True)
class ModelBudget:
    """What a run asks of the served model, flags first, then its profile (`model_profiles`)."""

    profile: str
    max_tokens: int | None  # None for a program without --max-tokens (verifier_check generates nothing)
    merge_threshold: float | None
    gate: Mapping[str, float]
    exit_params: Mapping[str, Any]
    verdict_threshold: float | None = None  # the yes/no verification's, for the programs that ask one

    def verifier(self, mode: str) -> verification.Verifier:
        """The verification step `mode` with this model's gate, exit parameters and verdict threshold."""
        return verification.Verifier(mode, dict(self.gate), dict(self.exit_params), self.verdict_threshold)


def served_profile(backend: Any) -> Any:
    """The `model_profiles.Profile` of the model the backend serves (the default model's if it cannot say)."""
    from sglang_rksc.programs.model_profiles import profile_for

    try:
        name = backend.get_model_name()
    except Exception:  # a backend that cannot say: the default model's profile
        name = None
    return profile_for(name)


# The programs whose verification asks "yes" or "no" of a solution: the profile's verdict threshold is theirs.
YES_NO_VERIFIERS = ("self_consistency_verify", "verifier_check")


# Programs whose branches are finished when they merge, after all the generation a merge could spare: there a
# merge saves only the short call that judges the branch (self-consistency: a verification whose prompt is
# cached, 0.1% of the GPU-projected time), and the merged branch votes with another's verdict, which tipped one
# float32 answer in 144 (docs/answer-costs.md#merging-finished-solutions). `auto` merges nothing in them; a
# threshold given still merges.
AUTO_MERGES_NOTHING = ("self_consistency_verify",)


def merge_threshold_for(program: str, merge: float | str | None, profile_threshold: float) -> float | None:
    """The similarity `program` merges at under `--merge-branches merge` (None: no merging)."""
    if merge != "auto":
        return merge  # type: ignore[return-value]  # a number, or None for the flag not given
    return None if program in AUTO_MERGES_NOTHING else profile_threshold


def resolve_for_model(backend: Any, options: argparse.Namespace, program: str) -> ModelBudget:
    """`program`'s budget on the served model: its flags where given, the model's profile otherwise."""
    profile = served_profile(backend)
    given = vars(options)
    max_tokens = (options.max_tokens or profile.max_tokens[program]) if "max_tokens" in given else None
    return ModelBudget(
        profile.name,
        max_tokens,
        merge_threshold_for(program, given.get("merge_branches"), profile.merge_threshold),
        profile.gate,
        profile.exit_params,
        profile.verdict_threshold if program in YES_NO_VERIFIERS else None,
    )


def merge_threshold(text: str) -> float | str:
    if text == "auto":
        return text  # the served model's profile decides
    value = float(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a similarity within [-1, 1], got {value}")
    return value


def add_generation_arguments(
    group: argparse._ActionsContainer,
    *,
    max_tokens_help: str,
    temperature_default: float,
    temperature_help: str,
    diversify_help: str | None = None,
) -> None:
    """`--max-tokens` (default: the served model's profile), `--diversify` (only with its help: for programs
    whose greedy branches would all agree) and `--temperature`, in that order."""
    group.add_argument("--max-tokens", type=positive_int, default=None, help=max_tokens_help)
    if diversify_help is not None:
        group.add_argument("--diversify", action="store_true", help=diversify_help)
    group.add_argument("--temperature", type=temperature, default=temperature_default, help=temperature_help)


def add_branch_arguments(
    group: argparse._ActionsContainer,
    *,
    verifier: bool = False,
    mark: bool = False,
    merge_what: str | None = None,
    aggregate_step: bool = False,
) -> None:
    """The flags of what a program does with its branches, those it asks for, in this order: `--verifier`,
    `--mark-branches`, `--merge-branches` (`merge_what`: what is merged, as its help says it) and the gather
    step's `--aggregate` and `--packets`."""
    if verifier:
        verification.add_argument(group)
    if mark:
        group.add_argument(
            "--mark-branches",
            choices=["on", "off"],
            default="on",
            help="tell an sglang-rksc server running --radix-eviction-policy rsbcm which branches were rejected or "
            "finished, so their KV is evicted first (no effect on other servers)",
        )
    if merge_what is not None:
        group.add_argument(
            "--merge-branches",
            type=merge_threshold,
            default=None,
            metavar="SIMILARITY|auto",
            help=f"merge {merge_what} whose generated text is this similar ('auto': the served model's profile, "
            "nothing in self-consistency, where a merge would save only a verification; "
            "pooled hidden states, from a server started "
            "with --rksc-span-embeddings on): one branch per group is continued and its vote weighs the group's "
            "size (approximate; default off; does nothing against other servers)",
        )
    if aggregate_step:
        aggregate.add_arguments(group)


# What each shared flag (by its destination) becomes among a program's `@sgl.function` arguments, with the
# served model's budget applied: a program gets those of the flags it has.
_SHARED_ARGUMENTS: tuple[tuple[str, str, Callable[[argparse.Namespace, ModelBudget], Any]], ...] = (
    ("max_tokens", "max_tokens", lambda options, budget: budget.max_tokens),
    ("temperature", "temperature", lambda options, budget: options.temperature),
    ("diversify", "diversify", lambda options, budget: options.diversify),
    ("verifier", "verifier", lambda options, budget: budget.verifier(options.verifier)),
    ("mark_branches", "mark", lambda options, budget: options.mark_branches == "on"),
    ("merge_branches", "merge", lambda options, budget: budget.merge_threshold),
    ("aggregate", "gather", lambda options, budget: options.aggregate),
    ("packets", "packets", lambda options, budget: options.packets),
)


def shared_arguments(options: argparse.Namespace, budget: ModelBudget) -> dict[str, Any]:
    """The `@sgl.function` arguments of the shared flags in `options` (`add_generation_arguments`,
    `add_branch_arguments`)."""
    given = vars(options)
    return {keyword: value(options, budget) for dest, keyword, value in _SHARED_ARGUMENTS if dest in given}


def merge(forks: Any, var: str, threshold: float | None, same: Callable[[str], Hashable] | None = None) -> Any:
    """`merge_branches(forks, var, threshold, same=same)`; with no threshold, every branch alone.

    Either way the branches are waited for: the program sends its next level at the same moments
    with and without merging, so that modes compared side by side see the same batches (greedy
    outputs on this engine depend on the batch a request runs in)."""
    from sglang_rksc.lang.merge import BranchGroups, merge_branches

    if threshold is not None:
        return merge_branches(forks, var, threshold, same=same)
    states = tuple(forks)
    for state in states:
        sync(state)
    return BranchGroups.alone(states)


# Openings that make greedy branches differ deterministically (`--diversify`): without them,
# greedy branches of one fork generate the same text.
BRANCH_OPENINGS = (
    "",
    "Let me think about this carefully. ",
    "Here is one way to do it: ",
    "Step by step: ",
    "A careful approach: ",
    "To begin with, ",
)


def assistant_turns(forks: Any, make_expr: Any, diversify: bool) -> None:
    """Append an assistant turn to every branch; with `diversify`, branch i opens with its own phrase."""
    import sglang as sgl

    for i, branch in enumerate(forks):
        opening = BRANCH_OPENINGS[i % len(BRANCH_OPENINGS)] if diversify else ""
        branch += sgl.assistant(opening + make_expr() if opening else make_expr())


@dataclass
class TokenCounts:
    """What the server reported for a set of generation calls."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def add_meta(self, meta: Mapping[str, Any] | None) -> None:
        if not meta:
            return
        self.requests += 1
        self.prompt_tokens += int(meta.get("prompt_tokens", 0))
        self.cached_tokens += int(meta.get("cached_tokens", 0))
        self.completion_tokens += int(meta.get("completion_tokens", 0))

    def __iadd__(self, other: TokenCounts) -> TokenCounts:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def open_jsonl(path: str | Path) -> Any:
    """`path` opened afresh for JSON lines, line-buffered (each row reaches the file when written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8", buffering=1)


MISSING = "none"  # a missing value (no answer found, no steps) in output for people


def for_people(value: Any) -> str:
    """`value` as output for people shows it: lists as `2, none, 8`, None as `none`, floats to two places."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list | tuple):
        return ", ".join(for_people(v) for v in value)
    return str(value)


def sum_tokens(rows: Iterable[Mapping[str, Any]]) -> TokenCounts:
    total = TokenCounts()
    for row in rows:
        total += TokenCounts(**row["tokens"])
    return total


def summarize(rows: Sequence[Mapping[str, Any]], seconds: float) -> dict[str, Any]:
    """Figures every program reports: accuracy against the dataset and the server's token counts."""
    tokens = sum_tokens(rows)
    return {
        "problems": len(rows),
        "accuracy": sum(bool(r["correct"]) for r in rows) / len(rows) if rows else 0.0,
        "seconds": seconds,
        **tokens.as_dict(),
        "cache_hit_rate": tokens.cache_hit_rate,
    }


class _RaisingParser(argparse.ArgumentParser):
    """Errors raise ValueError instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise ValueError(message)


def program_parser(program: Program, *, with_run_args: bool = True) -> argparse.ArgumentParser:
    """The program's command line; without run args, only its own flags (the benchmark uses that)."""
    parser_class = argparse.ArgumentParser if with_run_args else _RaisingParser
    parser = parser_class(
        prog=f"python -m sglang_rksc.programs.{program.NAME}",
        description=program.DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if with_run_args:
        data = parser.add_argument_group("problems")
        data.add_argument(
            "--start",
            type=non_negative_int,
            default=0,
            help="index of the first problem (GSM8K: 0-299 calibrate, 300+ report)",
        )
        data.add_argument("--num-problems", type=positive_int, default=3, help="how many problems")
    program.add_arguments(parser.add_argument_group(program.NAME))
    if with_run_args:
        run = parser.add_argument_group("run")
        run.add_argument("--parallel", type=positive_int, default=4, help="problems in flight at once")
        run.add_argument("--output", help="write one JSON line per problem to this file")
        run.add_argument("--quiet", action="store_true", help="no progress bar and no per-problem lines")
        run.add_argument(
            "--retries",
            type=non_negative_int,
            default=1,
            help="run a problem whose program failed (a request refused, a replica gone) again up to this many "
            "times; one that still fails is reported as failed and the run goes on",
        )
        add_endpoint_args(parser)
    return parser


def program_options(program: Program, argv: Sequence[str] = ()) -> argparse.Namespace:
    """The program's own options from `argv` (its defaults for what is not given); ValueError if bad."""
    return program_parser(program, with_run_args=False).parse_args(list(argv))


def program_main(program: Program, argv: Sequence[str] | None = None) -> int:
    """Parse flags, start or reach the server, run, print answers and a summary, write JSON lines."""
    args = program_parser(program).parse_args(argv)
    try:
        problems = program.load_problems(args.start, args.num_problems)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = open_jsonl(args.output) if args.output else None
    try:
        with endpoint(args) as url:
            backend = make_backend(url, args.chat_template)
            started = time.perf_counter()
            # Each row is written as its problem finishes: a run that is stopped keeps what it did.
            keep = None if output is None else (lambda row: output.write(json.dumps(row, ensure_ascii=False) + "\n"))
            rows = program.run(
                backend, problems, args, parallel=args.parallel, progress_bar=not args.quiet, on_row=keep
            )
            seconds = time.perf_counter() - started
    finally:
        if output is not None:
            output.close()
    answered = [row for row in rows if "failed" not in row]
    if not args.quiet:
        for row in rows:
            if "failed" in row:
                print(f"problem {row['index']}: failed: {row['failed']}")
                continue
            t = row["tokens"]
            print(
                f"{program.describe_row(row)}; cache hits {t['cached_tokens']}/{t['prompt_tokens']} prompt tokens "
                f"over {t['requests']} generations"
            )
    summary = summarize(rows, seconds)
    print(
        f"{summary['problems']} problems in {seconds:.1f} s: accuracy {summary['accuracy']:.2f}; "
        f"server-reported cache hits {summary['cached_tokens']}/{summary['prompt_tokens']} prompt tokens "
        f"({summary['cache_hit_rate']:.0%}); {summary['completion_tokens']} tokens generated"
    )
    if len(answered) < len(rows):
        print(f"{len(rows) - len(answered)} of {len(rows)} problems failed (counted wrong)")
    extras = {k: v for k, v in program.summarize(answered, args).items() if v is not None}
    if extras:
        print("; ".join(f"{k.replace('_', ' ')} {for_people(v)}" for k, v in extras.items()))
    if args.output:
        print(f"wrote {args.output}")
    return 0


def run_batch_rows(
    function: Any,
    arguments: list[dict[str, Any]],
    backend: Any,
    *,
    parallel: int,
    progress_bar: bool,
    on_value: Callable[[int, Any], None] | None = None,
    retries: int | None = None,
) -> list[Any]:
    """`function.run_batch`, raising if a program failed instead of returning a silent None, and handing
    each value to `on_value(position, value)` as soon as it and those before it are done, so that a caller
    can record every problem before the batch ends. As `run_batch` does: the traced common prefix cached
    first, then `parallel` programs at a time. Unlike it, an interrupted batch (Ctrl-C, SIGTERM) starts no
    further program and does not wait for those in flight (they fail once their server is stopped).

    With `retries` (not None), a failed program is run again, up to that many times, and one that still
    fails gives a `ProgramFailure` in its place instead of stopping the batch (a replica that died under a
    router: the others go on)."""
    from sglang.lang.global_config import global_config
    from sglang.lang.interpreter import cache_program

    if global_config.enable_precache_with_tracing and len(arguments) > 1:
        cache_program(function, backend.endpoint if hasattr(backend, "endpoint") else backend)

    def one(i: int, item: dict[str, Any]) -> Any:
        tries = 1 + (retries or 0)
        for _ in range(tries):
            (state,) = function.run_batch([item], backend=backend, num_threads=1, progress_bar=False)
            if state.ret_value is not None:
                return state.ret_value
            error = state.error() if hasattr(state, "error") else None
            detail = f"{type(error).__name__}: {error}" if error is not None else "no error reported"
            if retries is None:
                raise RuntimeError(f"program {function.func.__name__} failed on item {i}: {detail}")
        return ProgramFailure(detail, tries)

    pool = ThreadPoolExecutor(max(1, min(parallel, len(arguments))))
    values = []
    try:
        futures = [pool.submit(one, i, item) for i, item in enumerate(arguments)]
        bar = tqdm(total=len(futures)) if progress_bar else None
        for i, future in enumerate(futures):
            value = future.result()
            if bar is not None:
                bar.update(sum(f.done() for f in futures) - bar.n)
            values.append(value)
            if on_value is not None:
                on_value(i, value)
        if bar is not None:
            bar.close()
    finally:
        pool.shutdown(wait=len(values) == len(arguments), cancel_futures=True)
    return values


@dataclass(frozen=True)
class ProgramFailure:
    """A program that failed on every try (`run_batch_rows` with `retries`)."""

    error: str
    tries: int


def failed_row(problem: Any, failure: ProgramFailure) -> dict[str, Any]:
    """The row of a problem whose program failed on every try: no answer, the error stated."""
    return {
        "index": getattr(problem, "index", None),
        "gold": getattr(problem, "answer", None),
        "prediction": None,
        "correct": False,
        "failed": f"{failure.error} (after {failure.tries} tries)",
        "tokens": TokenCounts().as_dict(),
        "servers": {},
    }


@dataclass(frozen=True)
class ProgramRun:
    """A program's `run(backend, problems, options, *, parallel, progress_bar)`: its `@sgl.function` (`function()`)
    on every problem, with the problem's own arguments (`arguments(problem, options)`) and those of the shared
    flags under the served model's budget; `row` scores what it returned for a problem. One row per problem, in
    order."""

    name: str
    function: Callable[[], Any]
    arguments: Callable[[Any, argparse.Namespace], dict[str, Any]]
    row: Callable[[Any, Any], dict[str, Any]]

    def __call__(
        self,
        backend: Any,
        problems: Sequence[Any],
        options: argparse.Namespace,
        *,
        parallel: int,
        progress_bar: bool = True,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        shared = shared_arguments(options, resolve_for_model(backend, options, self.name))
        batch = [{**self.arguments(p, options), **shared} for p in problems]
        rows: list[dict[str, Any]] = []

        def keep(position: int, value: Any) -> None:
            problem = problems[position]
            rows.append(failed_row(problem, value) if isinstance(value, ProgramFailure) else self.row(problem, value))
            if on_row is not None:
                on_row(rows[-1])

        run_batch_rows(
            self.function(),
            batch,
            backend,
            parallel=parallel,
            progress_bar=progress_bar,
            on_value=keep,
            retries=getattr(options, "retries", None),  # a program's own run; the benchmarks stop on a failure
        )
        return rows


def _distinct_calls(metas: Iterable[Mapping[str, Any] | None]) -> Iterator[Mapping[str, Any]]:
    """Each generation call's meta_info once (a call shared by several branches appears in each)."""
    seen: set[str] = set()
    for meta in metas:
        if meta is None or meta.get("id") in seen:
            continue
        seen.add(meta.get("id"))
        yield meta


def count_calls(metas: Iterable[Mapping[str, Any] | None]) -> TokenCounts:
    """Token counts over generation calls; a call shared by several branches is counted once."""
    tokens = TokenCounts()
    for meta in _distinct_calls(metas):
        tokens.add_meta(meta)
    return tokens


def count_servers(metas: Iterable[Mapping[str, Any] | None]) -> dict[str, int]:
    """How many of the generation calls each server ran ("host:port", from `Meta.SERVER`; replicas behind a
    router); calls from a server without the plugin are not counted."""
    from sglang_rksc.wire import Meta, meta_entry

    counts: dict[str, int] = {}
    for meta in _distinct_calls(metas):
        entry = meta_entry(meta, Meta.SERVER)
        if entry is not None:
            name = f"{entry['host']}:{entry['port']}"
            counts[name] = counts.get(name, 0) + 1
    return counts


def call_accounting(metas: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    """A row's `tokens` (`count_calls`) and `servers` (`count_servers`) over its generation calls."""
    metas = list(metas)
    return {"tokens": count_calls(metas).as_dict(), "servers": count_servers(metas)}
