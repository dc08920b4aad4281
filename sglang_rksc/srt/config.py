"""Server-side settings of sglang-rksc: the `--rksc-*` flags.

The launcher takes these flags off the command line (SGLang's own parser
would refuse them), validates them, and hands them to the scheduler process
through the `SGLANG_RKSC_CONFIG` environment variable, which spawned children
inherit. A stock `python -m sglang.launch_server` reads the same variable.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, NoReturn

from sglang_rksc.exit.spec import ExitDefaults

ENV_VAR = "SGLANG_RKSC_CONFIG"
POOLINGS = ("last", "layers")


class ConfigError(ValueError):
    """A bad `--rksc-*` value: reported as one line."""


@dataclass(frozen=True)
class RkscConfig:
    # ASKS: semantic matching in the radix tree (off: the backend is SGLang's RadixCache).
    semantic: bool = False
    # Cosine (of centred, pooled hidden states) at or above which a finished span is deduplicated
    # into a sibling and later requests that reach it fork from the sibling.
    threshold: float = 0.95
    # Cosine (of centred, mean input-embedding rows) at or above which an unseen span forks from a
    # cached sibling at admission, with no forward; separate because the spaces differ.
    probe_threshold: float = 0.98
    # Spans shorter than this never fork or dedupe.
    min_span: int = 8
    # Spans whose lengths differ by more than this factor never fork or dedupe.
    length_ratio: float = 1.5
    # Which sources may fork a request at admission.
    dedupe: bool = True
    probe: bool = True
    # Pooling of a span's hidden states: 'last' (final-normed last layer) or 'layers' (several
    # layers, per-layer cosines weighted by exp(linspace(0, 1.5, L))).
    pooling: str = "last"
    pooling_layers: int = 4
    # CGEE: layer exit of verification requests (off: they run every layer, still reporting).
    cgee: bool = True
    # Server defaults of the exit rule, which a verify call may override: stop once the entropy
    # over the choices (nats) is below theta and moved less than eps over the last k layers,
    # checking from ceil(min_layer_fraction * depth) on. Calibrated on SmolLM2-135M (GSM8K 0-11 of
    # self_consistency_verify, 48 audited calls): layer 26 of 30 is the earliest with no disagreement.
    cgee_theta: float = ExitDefaults.theta
    cgee_eps: float = ExitDefaults.eps
    cgee_k: int = ExitDefaults.k
    cgee_min_layer_fraction: float = ExitDefaults.min_layer_fraction
    # Decode-side reuse: deterministic duplicates are answered from a finished twin (replay) or
    # wait for a running one (coalescing), with no forward of their own.
    reuse: bool = False
    # Pooled hidden states of each generation's output in its meta_info (`rksc_span`), so the
    # frontend can merge near-duplicate branches (sglang_rksc.lang.merge); no extra forward.
    span_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("threshold", "probe_threshold"):
            value = getattr(self, name)
            if not -1.0 <= value <= 1.0:
                raise ConfigError(f"--rksc-{name.replace('_', '-')} must be a cosine in [-1, 1], got {value}")
        if self.min_span < 1:
            raise ConfigError(f"--rksc-min-span must be at least 1, got {self.min_span}")
        if self.length_ratio < 1.0:
            raise ConfigError(f"--rksc-length-ratio must be at least 1.0, got {self.length_ratio}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"--rksc-pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pooling_layers < 1:
            raise ConfigError(f"--rksc-pooling-layers must be at least 1, got {self.pooling_layers}")
        for name in ("cgee_theta", "cgee_eps"):
            if not 0.0 <= getattr(self, name) <= 100.0:
                raise ConfigError(f"--rksc-{name.replace('_', '-')} must be in [0, 100], got {getattr(self, name)}")
        if self.cgee_k < 1:
            raise ConfigError(f"--rksc-cgee-k must be at least 1, got {self.cgee_k}")
        if not 0.0 < self.cgee_min_layer_fraction <= 1.0:
            raise ConfigError(f"--rksc-cgee-min-layer-fraction must be in (0, 1], got {self.cgee_min_layer_fraction}")

    def exit_defaults(self) -> ExitDefaults:
        return ExitDefaults(
            enabled=self.cgee,
            theta=self.cgee_theta,
            eps=self.cgee_eps,
            k=self.cgee_k,
            min_layer_fraction=self.cgee_min_layer_fraction,
        )

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ: Any = os.environ) -> RkscConfig:
        raw = environ.get(ENV_VAR)
        if not raw:
            return cls()
        try:
            values = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_VAR} is not JSON: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"{ENV_VAR} has unknown settings: {', '.join(sorted(unknown))}")
        return cls(**values)


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _on_off(text: str) -> bool:
    if text in ("on", "true", "1"):
        return True
    if text in ("off", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def add_arguments(parser: argparse._ActionsContainer) -> None:
    """The `--rksc-*` flags, with the defaults of `RkscConfig` (also used for --help)."""
    d = RkscConfig()
    parser.add_argument(
        "--rksc-semantic",
        type=_on_off,
        default=d.semantic,
        metavar="on|off",
        help="ASKS semantic sharing in the radix tree (default off: exact sharing only)",
    )
    parser.add_argument(
        "--rksc-threshold",
        type=float,
        default=d.threshold,
        help="hidden-state cosine for deduplicating a finished span into a sibling",
    )
    parser.add_argument(
        "--rksc-probe-threshold",
        type=float,
        default=d.probe_threshold,
        help="input-embedding cosine for forking an unseen span at admission",
    )
    parser.add_argument("--rksc-min-span", type=int, default=d.min_span, help="shortest span that may fork")
    parser.add_argument(
        "--rksc-length-ratio",
        type=float,
        default=d.length_ratio,
        help="largest length ratio between a span and its donor",
    )
    parser.add_argument(
        "--rksc-dedupe",
        type=_on_off,
        default=d.dedupe,
        metavar="on|off",
        help="deduplicate finished spans into similar siblings (frees their KV)",
    )
    parser.add_argument(
        "--rksc-probe",
        type=_on_off,
        default=d.probe,
        metavar="on|off",
        help="fork unseen spans by the zero-forward input-embedding probe",
    )
    parser.add_argument("--rksc-pooling", default=d.pooling, help=f"span pooling: {' or '.join(POOLINGS)}")
    parser.add_argument(
        "--rksc-pooling-layers", type=int, default=d.pooling_layers, help="layers pooled with --rksc-pooling layers"
    )
    parser.add_argument(
        "--rksc-cgee",
        type=_on_off,
        default=d.cgee,
        metavar="on|off",
        help="CGEE layer exit of verify requests (off: they run every layer; any cache backend)",
    )
    parser.add_argument(
        "--rksc-cgee-theta", type=float, default=d.cgee_theta, help="exit when the verdict entropy (nats) is below this"
    )
    parser.add_argument(
        "--rksc-cgee-eps", type=float, default=d.cgee_eps, help="...and moved less than this over the last k layers"
    )
    parser.add_argument("--rksc-cgee-k", type=int, default=d.cgee_k, help="layers of entropy history for the exit rule")
    parser.add_argument(
        "--rksc-cgee-min-layer-fraction",
        type=float,
        default=d.cgee_min_layer_fraction,
        help="first layer checked, as a fraction of the model's depth",
    )
    _add_decode_side_arguments(parser, d)


def _add_decode_side_arguments(parser: argparse._ActionsContainer, d: RkscConfig) -> None:
    parser.add_argument(
        "--rksc-reuse",
        type=_on_off,
        default=d.reuse,
        metavar="on|off",
        help="answer deterministic duplicates (greedy or seeded, same prompt and sampling) from a finished or "
        "running twin, without a forward (rksc backend)",
    )
    parser.add_argument(
        "--rksc-span-embeddings",
        type=_on_off,
        default=d.span_embeddings,
        metavar="on|off",
        help="return each generation's pooled hidden states in meta_info['rksc_span'] (from the forwards already "
        "run), which the frontend's merge_branches groups near-duplicate branches by (rksc backend)",
    )


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
    values = {k.removeprefix("rksc_"): v for k, v in vars(parsed).items()}
    return rest, RkscConfig(**values)
