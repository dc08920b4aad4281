"""A request's sglang-rksc options: `custom_params["rksc"]` (no SGLang import, so any module may use it)."""

from __future__ import annotations

from typing import Any


def request_options(req: Any) -> dict[str, Any]:
    """The request's `custom_params["rksc"]` (a dict; anything else counts as empty)."""
    custom = getattr(req.sampling_params, "custom_params", None) or {}
    options = custom.get("rksc") or {}
    return options if isinstance(options, dict) else {}
