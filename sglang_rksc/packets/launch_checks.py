"""What the launcher checks before a server with packets starts, each failure in one line."""

from __future__ import annotations

from sglang_rksc.config import RkscConfig
from sglang_rksc.runtime.cpu import flag_value
from sglang_rksc.runtime.model_path import supported_model_config


def check(settings: RkscConfig, model_path: str, argv: list[str]) -> None:
    """ValueError when this launch cannot reuse packets."""
    if not settings.packets:
        return
    supported_model_config(model_path, "--rksc-packets on")  # keys are turned by the layers' rotary embedding
    if settings.heads.sparsity > 0:
        raise ValueError("--rksc-packets on does not work with head compression yet (windows are not copied)")
    if settings.semantic.on:
        raise ValueError("--rksc-packets on does not work with --rksc-semantic on yet")
    for flag, allowed in (("--page-size", "1"), ("--attention-backend", "torch_native")):
        value = flag_value(argv, flag)
        if value is not None and value != allowed:
            raise ValueError(f"--rksc-packets on needs {flag} {allowed} (its prefill path is torch's), got {value}")
    for flag in ("--enable-mixed-chunk", "--speculative-algorithm", "--disable-radix-cache"):
        if flag in argv or flag_value(argv, flag) is not None:
            raise ValueError(f"--rksc-packets on does not support {flag}")
