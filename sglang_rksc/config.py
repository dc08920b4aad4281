"""Server-side settings of sglang-rksc: the `--rksc-*` flags, one dataclass checked once and passed whole.

Each setting is declared once, as a field with its default, help and bounds
(`sglang_rksc.settings.setting`); its flag, its check and its help text derive
from that field. The launcher takes these flags off the command line (SGLang's
own parser would refuse them), validates them, and hands them to the scheduler
process through the `SGLANG_RKSC_CONFIG` environment variable, which spawned
children inherit. A stock `python -m sglang.launch_server` reads the same variable.
No SGLang import.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import Field, asdict, dataclass, field
from typing import Any, NoReturn

from sglang_rksc.exit.spec import ExitDefaults
from sglang_rksc.settings import SettingError, add_flags, bounds_of, build, check, leaves, setting

ENV_VAR = "SGLANG_RKSC_CONFIG"
POOLINGS = ("last", "layers")
ConfigError = SettingError


@dataclass(frozen=True)
class SemanticSettings:
    """ASKS: semantic matching in the radix tree (off: the backend is SGLang's RadixCache)."""

    on: bool = setting(False, "ASKS semantic sharing in the radix tree (default off: exact sharing only)", flag="")
    threshold: float = setting(
        0.95,
        "hidden-state cosine (centred, pooled) for deduplicating a finished span into a sibling, and so for "
        "forking later requests that reach it",
        low=-1.0,
        high=1.0,
    )
    probe_threshold: float = setting(
        0.98,
        "input-embedding cosine for forking an unseen span at admission, with no forward (its own space)",
        low=-1.0,
        high=1.0,
    )
    min_span: int = setting(8, "shortest span that may fork or dedupe", low=1)
    length_ratio: float = setting(1.5, "largest length ratio between a span and its donor", low=1.0)
    dedupe: bool = setting(True, "deduplicate finished spans into similar siblings (frees their KV)")
    # Off by default: a mean of input embeddings scores questions of different GSM8K problems at up to 0.984 and
    # forked one onto another's answer on the quality model (docs/mechanisms/asks.md).
    probe: bool = setting(
        False,
        "fork unseen spans by the zero-forward input-embedding probe (default off: it "
        "cannot tell GSM8K questions apart)",
    )
    pooling: str = setting(
        "last",
        "span pooling: 'last' (final-normed last layer) or 'layers' (several layers, per-layer cosines "
        "weighted by exp(linspace(0, 1.5, L)))",
        choices=POOLINGS,
    )
    pooling_layers: int = setting(4, "layers pooled with --rksc-pooling layers", low=1)


@dataclass(frozen=True)
class HeadCompressionSettings:
    """RLKV-style head compression: the least important KV heads keep only sinks and a recent window."""

    sparsity: float = setting(
        0.0,
        "share of KV heads compressed to sink + window, the least important first by the head mask (0: off)",
        low=0.0,
        high=0.95,
        flag="head-compression",
    )
    sink: int = setting(16, "first tokens a compressed head keeps", low=0)
    window: int = setting(64, "most recent tokens a compressed head keeps", low=1)
    head_mask: str = setting(
        "",
        "head-scores file (python -m sglang_rksc.tools.rlkv.calibrate); default: the one shipped for the model; "
        "random:SEED: the shipped scores dealt to the heads at random (a control)",
    )
    window_pool: float = setting(
        0.5,
        "window slots (compressed heads' sinks and windows) per token slot; 0.25 starved the serving benchmark",
        above=0.0,
        high=1.0,
    )


DRAFT_PROFILES = ("auto", "cpu", "gpu")


@dataclass(frozen=True)
class DraftSettings:
    """Drafts: several tokens per decode step, proposed from the program's own branches and checked in one forward."""

    on: bool = setting(
        False,
        "draft tokens from the request's own tokens, its sibling branches and recent outputs of its namespace, and "
        "check them in one verify forward per decode step (SGLang speculative decoding; outputs unchanged)",
        flag="",
    )
    max_tokens: int = setting(8, "most drafted tokens a row carries in one verify step", low=1, high=16)
    profile: str = setting(
        "auto",
        "the step cost that sets the draft length: 'cpu' (timed on this machine as it runs), 'gpu' (the measured "
        "H100 step table of runtime/cost_models), 'auto' (cpu on a CPU, gpu on a GPU)",
        choices=DRAFT_PROFILES,
    )
    store_tokens: int = setting(
        200_000, "tokens of finished sequences kept as drafting material (oldest evicted first)", low=0
    )
    gram: int = setting(2, "tokens that must match before a draft is proposed", low=1, high=8)


@dataclass(frozen=True)
class AuditSettings:
    """Audits: for a sampled share of requests, the next-token distributions the server computed, kept (off the
    serving path) for a replay against the exact computation (`python -m sglang_rksc.tools.audits.replay`)."""

    rate: float = setting(
        0.0,
        "share of generation requests whose next-token distributions are recorded for an audit: those an "
        "approximate mechanism touched (ASKS, head compression, packets) and, as controls, those none did",
        low=0.0,
        high=1.0,
    )
    log: str = setting("", "JSON-lines file the audit records are appended to ('': a temporary file, shown in "
                       "/server_info)")  # fmt: skip
    top_k: int = setting(16, "most probable tokens kept per audited position", low=1, high=256)
    positions: int = setting(32, "generated positions kept per audited request (evenly spread)", low=1, high=4096)


@dataclass(frozen=True)
class RkscConfig:
    semantic: SemanticSettings = field(default_factory=SemanticSettings)
    cgee: ExitDefaults = field(default_factory=ExitDefaults)
    heads: HeadCompressionSettings = field(default_factory=HeadCompressionSettings)
    drafts: DraftSettings = field(default_factory=DraftSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    reuse: bool = setting(
        False,
        "answer deterministic duplicates (greedy or seeded, same prompt and sampling) from a finished or running "
        "twin, without a forward (rksc backend)",
    )
    span_embeddings: bool = setting(
        False,
        "return each generation's pooled hidden states in meta_info['rksc_span'] (from the forwards already run), "
        "which the frontend's merge_branches groups near-duplicate branches by (rksc backend)",
    )

    packets: bool = setting(
        False,
        "reuse the cached KV of prompt spans a request marks as packets (custom_params.rksc.packets), turned to "
        "their new positions, instead of computing them (rksc backend, torch-native attention)",
    )
    packet_adapter: str = setting(
        "auto",
        "soft-token adapter around reused packets: 'auto' (the one shipped for the served model, else none), "
        "'none' (plain reuse), or a file (python -m sglang_rksc.tools.packets.train_adapter)",
    )

    def __post_init__(self) -> None:
        check(self, flag_name)

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def current(cls) -> RkscConfig:
        """This process's settings (`SGLANG_RKSC_CONFIG`), parsed once per value of the variable."""
        raw = os.environ.get(ENV_VAR, "")
        if raw not in _PARSED:
            _PARSED[raw] = cls.from_env({ENV_VAR: raw})
        return _PARSED[raw]

    @classmethod
    def from_env(cls, environ: Any = os.environ) -> RkscConfig:
        raw = environ.get(ENV_VAR)
        if not raw:
            return cls()
        try:
            nested = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_VAR} is not JSON: {exc}") from exc
        values = dict(_flatten(nested))
        known = {path for path, _, _ in leaves(cls)}
        unknown = sorted(".".join(path) for path in set(values) - known)
        if unknown:
            raise ConfigError(f"{ENV_VAR} has unknown settings: {', '.join(unknown)}")
        return build(cls, values)


_PARSED: dict[str, RkscConfig] = {}


def _flatten(values: Any, path: tuple[str, ...] = ()) -> Any:
    if isinstance(values, dict):
        for key, value in values.items():
            yield from _flatten(value, (*path, key))
    else:
        yield path, values


# Flags are `--rksc-<group prefix><field>`; a field's own `flag` replaces its name ("" keeps the prefix alone).
_GROUP_PREFIX = {"semantic": "", "cgee": "cgee-", "rule": "", "heads": "", "drafts": "draft-", "audit": "audit-"}
_GROUP_OWN_FLAG = {"semantic": "semantic", "cgee": "cgee", "drafts": "drafts"}


def flag_name(path: tuple[str, ...], f: Field) -> str:
    """The command-line flag of the setting at `path` (e.g. ("cgee", "rule", "theta") -> --rksc-cgee-theta)."""
    prefix = "".join(_GROUP_PREFIX[group] for group in path[:-1])
    own = bounds_of(f).flag
    if own == "":
        return "--rksc-" + _GROUP_OWN_FLAG[path[0]]
    return "--rksc-" + prefix + (own or path[-1]).replace("_", "-")


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def add_arguments(parser: argparse._ActionsContainer) -> None:
    """The `--rksc-*` flags, with the defaults of `RkscConfig` (also used for --help)."""
    add_flags(parser, RkscConfig, flag_name, RkscConfig())


def split_args(argv: list[str]) -> tuple[list[str], RkscConfig]:
    """Separate the `--rksc-*` flags from SGLang's; raise ConfigError on a bad one."""
    ours, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--rksc-"):
            ours.append(arg)
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                ours.append(argv[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    parser = _RaisingParser(add_help=False)
    add_arguments(parser)
    parsed = parser.parse_args(ours)
    values = {tuple(dest.split("__")): value for dest, value in vars(parsed).items()}
    return rest, build(RkscConfig, values)
