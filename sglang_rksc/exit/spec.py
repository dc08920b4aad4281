"""What a verification request asks of the server, and its validation.

A request is a verification when `sampling_params.custom_params` holds
`{"rksc": {"cgee": {...}}}`. The frontend sends the choices as text; the
tokenizer process resolves them to token ids (`choice_ids`), checks every
value, and raises `ValueError`, which SGLang answers with HTTP 400 while it
keeps serving. The scheduler then reads the resolved spec from the request.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sglang_rksc.cache.request_options import CUSTOM_KEY

CGEE_KEY = "cgee"
META_KEY = "rksc_cgee"  # the response's meta_info key


@dataclass(frozen=True)
class ExitSpec:
    """One verification: the choice tokens and the entropy-stabilised exit rule.

    The forward checks after every layer from `min_layer` on (layers counted from 1) and
    stops once the entropy over the choices is below `theta` nats and has moved by less
    than `eps` over the last `k` layers. `early_exit=False` runs the full depth.
    `record=True` also runs the full depth, but reports where it would have stopped and
    every layer's distribution, so that exit and full-depth verdicts can be compared.
    """

    choice_ids: tuple[int, ...]
    theta: float
    eps: float
    k: int
    min_layer: int
    early_exit: bool = True
    record: bool = False
    prefix_ids: tuple[int, ...] = ()  # tokens all choices start with, appended to the prompt

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "choice_ids": list(self.choice_ids), "prefix_ids": list(self.prefix_ids)}


@dataclass(frozen=True)
class ExitDefaults:
    """Server-wide defaults (the `--rksc-cgee-*` flags, whose defaults are these); a call may override each."""

    enabled: bool = True
    theta: float = 0.1
    eps: float = 0.05
    k: int = 1
    min_layer_fraction: float = 0.86  # min_layer = ceil(fraction * depth) when the call gives none


def requested(custom_params: Any) -> dict[str, Any] | None:
    """The raw `cgee` dict of a request, or None when it is not a verification."""
    if not isinstance(custom_params, dict):
        return None
    ours = custom_params.get(CUSTOM_KEY)
    if not isinstance(ours, dict):
        return None
    raw = ours.get(CGEE_KEY)
    return raw if isinstance(raw, dict) else None


def _number(raw: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"cgee.{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"cgee.{name} must be in [{low}, {high}], got {value}")
    return float(value)


def _flag(raw: dict[str, Any], name: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"cgee.{name} must be true or false, got {value!r}")
    return value


_KNOWN = {"choices", "choice_ids", "prefix_ids", "theta", "eps", "k", "min_layer", "early_exit", "record"}


def _positive_int(raw: dict[str, Any], name: str) -> None:
    value = raw.get(name)
    if name in raw and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"cgee.{name} must be a positive integer, got {value!r:.80}")


def check_call_params(raw: dict[str, Any]) -> None:
    """The checks that need no model: what `verify` runs when a call is written, and the server first."""
    unknown = set(raw) - _KNOWN
    if unknown:
        raise ValueError(f"cgee has unknown parameters: {', '.join(sorted(map(str, unknown)))}")
    for name in ("theta", "eps"):
        if name in raw:
            _number(raw, name, 0.0, 0.0, 100.0)
    _positive_int(raw, "k")
    _positive_int(raw, "min_layer")
    for name in ("early_exit", "record"):
        _flag(raw, name, False)


def parse(
    raw: dict[str, Any], choice_ids: list[int], num_layers: int, defaults: ExitDefaults, prefix_ids: list[int] = ()
) -> ExitSpec:
    """Validate a request's `cgee` dict against the model; `choice_ids` are already resolved."""
    check_call_params(raw)
    theta = _number(raw, "theta", defaults.theta, 0.0, 100.0)
    eps = _number(raw, "eps", defaults.eps, 0.0, 100.0)
    k = raw.get("k", defaults.k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < num_layers:
        raise ValueError(f"cgee.k must be an integer in [1, {num_layers - 1}], got {k!r}")
    default_min = max(1, math.ceil(defaults.min_layer_fraction * num_layers))
    min_layer = raw.get("min_layer", default_min)
    if isinstance(min_layer, bool) or not isinstance(min_layer, int) or not 1 <= min_layer <= num_layers:
        raise ValueError(
            f"cgee.min_layer must be an integer in [1, {num_layers}] (the model's depth), got {min_layer!r}"
        )
    early_exit = _flag(raw, "early_exit", True) and defaults.enabled
    return ExitSpec(
        choice_ids=tuple(choice_ids),
        theta=theta,
        eps=eps,
        k=k,
        min_layer=min_layer,
        early_exit=early_exit,
        record=_flag(raw, "record", False),
        prefix_ids=tuple(prefix_ids),
    )


def resolve_choices(raw: dict[str, Any], encode: Any, vocab_size: int) -> tuple[list[int], list[int]]:
    """Choice token ids, and the tokens all choices start with.

    Given as `choice_ids` (one token each), or as texts in `choices`: the verdict is read
    at the first token where the choices differ, so their shared leading tokens (" 4" and
    " 5" both start with the token " " in SmolLM2) are returned to be appended to the prompt.
    """
    if "choice_ids" in raw:
        ids = raw["choice_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"cgee.choice_ids must be a list of token ids, got {ids!r}")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"cgee.choice_ids {bad} are not in the vocabulary (size {vocab_size})")
        common = raw.get("prefix_ids", [])  # an already resolved request
        if not isinstance(common, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in common
        ):
            raise ValueError(f"cgee.prefix_ids must be a list of token ids in [0, {vocab_size}), got {common!r:.80}")
    else:
        texts = raw.get("choices")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"cgee.choices must be a list of strings, got {texts!r}")
        if len(texts) < 2:
            raise ValueError(f"cgee needs at least two choices, got {len(texts)}")
        if len(set(texts)) != len(texts):
            raise ValueError(f"cgee choices must be distinct, got {texts!r}")
        encoded = [list(encode(text)) for text in texts]
        if not all(encoded):
            raise ValueError(
                f"cgee choice {texts[[bool(e) for e in encoded].index(False)]!r} is empty after tokenization"
            )
        common = []
        for column in zip(*encoded, strict=False):
            if len(set(column)) > 1:
                break
            common.append(column[0])
        if any(len(e) == len(common) for e in encoded):
            raise ValueError(f"cgee choices must not be token prefixes of one another, got {texts!r}")
        ids = [int(e[len(common)]) for e in encoded]
    if len(ids) < 2:
        raise ValueError(f"cgee needs at least two choices, got {len(ids)}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"cgee choices must differ in their first token, got token ids {ids}")
    return ids, common
