"""What the launcher checks before a server with packets starts, each failure in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sglang_rksc.config import RkscConfig
from sglang_rksc.packets.adapter import AdapterError, PacketAdapter, packaged
from sglang_rksc.runtime.cpu import flag_value
from sglang_rksc.runtime.model_path import supported_model_config
from sglang_rksc.runtime.models import shipped_for

AUTO_ADAPTER = "auto"  # RkscConfig.packet_adapter's default: the one shipped for the served model
NO_ADAPTER = "none"


def resolve(settings: RkscConfig, model_path: str, argv: list[str]) -> RkscConfig:
    """The settings with the packet adapter resolved (a file, or 'none'); ValueError when this launch cannot
    reuse packets."""
    if not settings.packets:
        return settings
    # keys are turned by the layers' rotary embedding
    model_config = supported_model_config(model_path, "--rksc-packets on")
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
    adapter = _adapter_file(settings.packet_adapter, model_path)
    if adapter is not None:
        try:
            hidden = PacketAdapter.load(adapter).hidden_size
        except AdapterError as exc:
            raise ValueError(str(exc)) from None
        if hidden != model_config.get("hidden_size"):
            raise ValueError(
                f"packet adapter {adapter} has vectors of {hidden}, this model's hidden size is "
                f"{model_config.get('hidden_size')}"
            )
    resolved = str(adapter.resolve()) if adapter is not None else NO_ADAPTER
    return dataclasses.replace(settings, packet_adapter=resolved)


def _adapter_file(choice: str, model_path: str) -> Path | None:
    if choice == NO_ADAPTER:
        return None
    return Path(choice) if choice != AUTO_ADAPTER else shipped_for(model_path, packaged)
