"""What a verification request asks of the server, and its validation.

A request is a verification when `sampling_params.custom_params` holds
`{"rksc": {"cgee": {...}}}` (`sglang_rksc.wire`). The frontend sends the choices as text; the
tokenizer process resolves them to token ids (`choice_ids`), checks every
value, and raises `ValueError`, which SGLang answers with HTTP 400 while it
keeps serving. The scheduler then reads the resolved spec from the request.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sglang_rksc.settings import Bounds, SettingError, bounds_of, check_value, setting
from sglang_rksc.wire import Option, options_of


@dataclass(frozen=True)
class ExitRule:
    """The exit rule's parameters, declared once: each is a server flag (`--rksc-cgee-<name>`, whose
    default is the field's) and a per-call override (`verify(<name>=...)`, `cgee.<name>` on the wire).

    The forward checks after every layer from the minimum layer on and stops once the entropy over
    the choices is below `theta` nats and has moved by less than `eps` over the last `k` layers.
    Server defaults calibrated on SmolLM2-135M (GSM8K 0-11 of self_consistency_verify, 48 audited calls).
    """

    theta: float = setting(0.1, "exit when the verdict entropy (nats) is below this", low=0.0, high=100.0)
    eps: float = setting(0.05, "...and moved less than this over the last k layers", low=0.0, high=100.0)
    k: int = setting(1, "layers of entropy history for the exit rule (at most the depth - 1)", low=1)


RULE_PARAMS = tuple(f.name for f in fields(ExitRule))
# The first layer checked: per call a layer number (`min_layer`), on the server a fraction of the depth.
MIN_LAYER = "min_layer"
CALL_PARAMS = (*RULE_PARAMS, MIN_LAYER)


@dataclass(frozen=True)
class ExitDefaults:
    """The server's `--rksc-cgee*` settings: whether layer exit runs, the rule, and where checking starts."""

    enabled: bool = setting(
        True, "CGEE layer exit of verify requests (off: they run every layer; any cache backend)", flag=""
    )
    rule: ExitRule = field(default_factory=ExitRule)
    min_layer_fraction: float = setting(
        0.86, "first layer checked, as a fraction of the model's depth (SmolLM2: 26 of 30)", above=0.0, high=1.0
    )

    def first_layer(self, num_layers: int) -> int:
        return max(1, math.ceil(self.min_layer_fraction * num_layers))


@dataclass(frozen=True)
class ExitSpec:
    """One verification: the choice tokens, the exit rule, and where checking starts (layers counted
    from 1). `early_exit=False` runs the full depth. `record=True` also runs the full depth, but
    reports where it would have stopped and every layer's distribution, so that exit and full-depth
    verdicts can be compared."""

    choice_ids: tuple[int, ...]
    rule: ExitRule
    min_layer: int
    early_exit: bool = True
    record: bool = False
    prefix_ids: tuple[int, ...] = ()  # tokens all choices start with, appended to the prompt

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as it travels in `custom_params`: the rule's parameters at the top level."""
        out = {**asdict(self), **asdict(self.rule)}
        del out["rule"]
        return {**out, "choice_ids": list(self.choice_ids), "prefix_ids": list(self.prefix_ids)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExitSpec:
        return cls(
            choice_ids=tuple(raw["choice_ids"]),
            rule=ExitRule(**{name: raw[name] for name in RULE_PARAMS}),
            min_layer=raw[MIN_LAYER],
            early_exit=raw.get("early_exit", True),
            record=raw.get("record", False),
            prefix_ids=tuple(raw.get("prefix_ids", ())),
        )


def requested(custom_params: Any) -> dict[str, Any] | None:
    """The raw `cgee` dict of a request, or None when it is not a verification."""
    options = options_of(custom_params)
    raw = options.get(Option.CGEE)
    return raw if isinstance(raw, dict) else None


_FLAGS = ("early_exit", "record")
_KNOWN = {"choices", "choice_ids", "prefix_ids", *CALL_PARAMS, *_FLAGS}


def _check(name: str, value: Any, kind: type, bounds: Bounds) -> None:
    try:
        check_value(f"cgee.{name}", value, kind, bounds)
    except SettingError as exc:
        raise ValueError(str(exc)) from None


def check_call_params(raw: dict[str, Any]) -> None:
    """The checks that need no model: what `verify` runs when a call is written, and the server first."""
    unknown = set(raw) - _KNOWN
    if unknown:
        raise ValueError(f"cgee has unknown parameters: {', '.join(sorted(map(str, unknown)))}")
    for f in fields(ExitRule):
        if f.name in raw:
            _check(f.name, raw[f.name], type(f.default), bounds_of(f))
    if MIN_LAYER in raw:
        _check(MIN_LAYER, raw[MIN_LAYER], int, Bounds("", low=1))
    for name in _FLAGS:
        if name in raw:
            _check(name, raw[name], bool, Bounds(""))


def parse(
    raw: dict[str, Any], choice_ids: list[int], num_layers: int, defaults: ExitDefaults, prefix_ids: list[int] = ()
) -> ExitSpec:
    """Validate a request's `cgee` dict against the model; `choice_ids` are already resolved."""
    check_call_params(raw)
    rule = ExitRule(**{name: raw.get(name, getattr(defaults.rule, name)) for name in RULE_PARAMS})
    if rule.k >= num_layers:
        raise ValueError(f"cgee.k must be an integer in [1, {num_layers - 1}], got {rule.k!r}")
    min_layer = raw.get(MIN_LAYER, defaults.first_layer(num_layers))
    if min_layer > num_layers:
        raise ValueError(f"cgee.min_layer must be an integer in [1, {num_layers}] (the model's depth), got {min_layer}")
    return ExitSpec(
        choice_ids=tuple(choice_ids),
        rule=rule,
        min_layer=min_layer,
        early_exit=raw.get("early_exit", True) and defaults.enabled,
        record=raw.get("record", False),
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
