"""What every program shares: the endpoint, the chat template, token accounting, output."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


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
        "--server-args",
        default="",
        help="extra flags for the embedded server, as one quoted string (e.g. \"--disable-radix-cache\"); "
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
    from sglang_rksc.srt.server_process import LaunchedServer, ServerStartError

    server = LaunchedServer(shlex.split(args.server_args), log_path=args.server_log)
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
    """An `sgl.RuntimeEndpoint` with the chat template the model was trained with."""
    import sglang as sgl

    backend = sgl.RuntimeEndpoint(url)
    if chat_template == "auto":
        if re.search(r"smollm", backend.get_model_name(), re.IGNORECASE):
            chat_template = "chatml"  # SGLang's detection does not know SmolLM2
        else:
            return backend
    from sglang.lang.chat_template import get_chat_template

    backend.chat_template = get_chat_template(chat_template)
    return backend


def fork(state: Any, size: int) -> Any:
    """`state.fork(size)`, with the shared prefix committed to the server's cache first.

    SGLang's frontend commits the prefix (a `max_new_tokens=0` request) only
    when the state's text is already materialised at fork time; right after
    `s += ...` it often is not yet, and the branches then race to prefill the
    same prefix. Syncing first makes the commit happen every time.
    """
    state.sync()
    return state.fork(size)


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

    def __iadd__(self, other: "TokenCounts") -> "TokenCounts":
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self

    @property
    def cache_hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
