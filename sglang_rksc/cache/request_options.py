"""A request's sglang-rksc options, `custom_params["rksc"]`: their schema and their one reader.

No SGLang import, so any module may use it. The tokenizer process checks every
request against `check_custom_params` (HTTP 400 naming the key), so the
scheduler reads only options of the right shape; `request_options` still
treats anything else as empty, as a second line of defence.
"""

from __future__ import annotations

from typing import Any

from sglang_rksc.cache.marks import MARKS

CUSTOM_KEY = "rksc"
# Option -> what it holds. `cgee` (a verification's spec) is checked in depth by `sglang_rksc.exit`.
BOOL_OPTIONS = {
    "semantic": "false opts the request out of semantic sharing (ASKS)",
    "fork": "false opts the request out of a semantic fork at admission",
    "reuse": "false opts the request out of decode-side reuse",
}
OPTIONS = (*BOOL_OPTIONS, "mark", "cgee")


def check_custom_params(custom_params: Any) -> None:
    """Raise ValueError, naming the key, unless `custom_params` and its `rksc` options are well formed."""
    if custom_params is None:
        return
    if not isinstance(custom_params, dict):
        raise ValueError(f"sampling_params.custom_params must be an object, got {type(custom_params).__name__}")
    if CUSTOM_KEY not in custom_params:
        return
    options = custom_params[CUSTOM_KEY]
    where = f"custom_params.{CUSTOM_KEY}"
    if not isinstance(options, dict):
        raise ValueError(f"{where} must be an object of options ({', '.join(OPTIONS)}), got {options!r:.80}")
    for key, value in options.items():
        if key in BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{key} must be true or false, got {value!r:.80}")
        elif key == "mark":
            if not isinstance(value, str) or value not in MARKS:
                raise ValueError(f"{where}.mark must be one of {', '.join(MARKS)}, got {value!r:.80}")
        elif key == "cgee":
            if not isinstance(value, dict):
                raise ValueError(f"{where}.cgee must be an object, got {value!r:.80}")
        else:
            raise ValueError(f"{where} has an unknown option {key!r:.80} (known: {', '.join(OPTIONS)})")


def request_options(req: Any) -> dict[str, Any]:
    """The request's `custom_params["rksc"]` (a dict; anything else counts as empty)."""
    custom = getattr(req.sampling_params, "custom_params", None)
    options = custom.get(CUSTOM_KEY) if isinstance(custom, dict) else None
    return options if isinstance(options, dict) else {}
