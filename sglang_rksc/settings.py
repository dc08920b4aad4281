"""Settings declared once: a dataclass field carries its default, help and bounds; checks and flags derive.

    threshold: float = setting(0.95, "hidden-state cosine for dedupe", low=-1.0, high=1.0)

`check(obj, name_of)` validates every field of a (possibly nested) settings dataclass by its
metadata, naming the value the way the caller's user knows it (`--rksc-threshold`, `cgee.theta`);
`add_flags` builds argparse flags from the same fields. No SGLang import.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from dataclasses import Field, dataclass, field, fields, is_dataclass
from typing import Any

_KEY = "rksc_setting"


class SettingError(ValueError):
    """A bad setting: reported as one line."""


@dataclass(frozen=True)
class Bounds:
    help: str
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # the flag's name when it is not the field's (e.g. `on` -> `semantic`)


def setting(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
) -> Any:
    """A settings field: its default and what a valid value is."""
    return field(default=default, metadata={_KEY: Bounds(help, low, high, above, choices, flag)})


def bounds_of(f: Field) -> Bounds | None:
    return f.metadata.get(_KEY)


def check_value(name: str, value: Any, kind: type, bounds: Bounds) -> None:
    """Raise SettingError unless `value` is a `kind` within `bounds` (`name` is how the user wrote it)."""
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingError(f"{name} must be true or false, got {value!r:.80}")
        return
    if kind is str:
        if not isinstance(value, str) or (bounds.choices and value not in bounds.choices):
            raise SettingError(f"{name} must be one of {', '.join(bounds.choices or ())}, got {value!r:.80}")
        return
    numeric = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
        raise SettingError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r:.80}")
    if bounds.above is not None and not value > bounds.above:
        high = "" if bounds.high is None else f", at most {bounds.high:g}"
        raise SettingError(f"{name} must be above {bounds.above:g}{high}, got {value}")
    if (bounds.low is not None and value < bounds.low) or (bounds.high is not None and value > bounds.high):
        if bounds.high is None:
            raise SettingError(f"{name} must be at least {bounds.low:g}, got {value}")
        raise SettingError(f"{name} must be in [{bounds.low:g}, {bounds.high:g}], got {value}")


def leaves(cls: type, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Field, type]]:
    """Every settings field of `cls`, nested groups flattened: (path of field names, field, type)."""
    for f in fields(cls):
        kind = _resolve(cls, f)
        if is_dataclass(kind):
            yield from leaves(kind, (*path, f.name))
        elif bounds_of(f) is not None:
            yield (*path, f.name), f, kind


def _resolve(cls: type, f: Field) -> type:
    if isinstance(f.type, type):
        return f.type
    import typing

    return typing.get_type_hints(cls)[f.name]


def get_path(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def check(obj: Any, name_of: Callable[[tuple[str, ...], Field], str]) -> None:
    """Validate every settings field of `obj` (and of its nested groups)."""
    for path, f, kind in leaves(type(obj)):
        check_value(name_of(path, f), get_path(obj, path), kind, bounds_of(f))


def _on_off(text: str) -> bool:
    if text in ("on", "true", "1"):
        return True
    if text in ("off", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def add_flags(
    parser: argparse._ActionsContainer, cls: type, flag_of: Callable[[tuple[str, ...], Field], str], defaults: Any
) -> None:
    """One flag per settings field, with its help and default; `dest` is the field's path joined by '__'."""
    for path, f, kind in leaves(cls):
        bounds = bounds_of(f)
        options: dict[str, Any] = {"dest": "__".join(path), "default": get_path(defaults, path), "help": bounds.help}
        if kind is bool:
            options.update(type=_on_off, metavar="on|off")
        elif kind is str:
            options.update(metavar="|".join(bounds.choices or ()) or None)
        else:
            options.update(type=kind)
        parser.add_argument(flag_of(path, f), **options)


def build(cls: type, values: dict[tuple[str, ...], Any]) -> Any:
    """An instance of the (nested) settings class from values keyed by field path; the rest default."""
    kwargs = {}
    for f in fields(cls):
        kind = _resolve(cls, f)
        if is_dataclass(kind):
            inner = {path[1:]: v for path, v in values.items() if path[0] == f.name}
            kwargs[f.name] = build(kind, inner)
        elif (f.name,) in values:
            kwargs[f.name] = values[(f.name,)]
    return cls(**kwargs)
