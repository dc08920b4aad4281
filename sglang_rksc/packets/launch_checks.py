"""What the launcher checks before a server with packets starts, each failure in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sglang_rksc.config import RkscConfig
from sglang_rksc.packets.adapter import AdapterError, PacketAdapter, packaged
from sglang_rksc.runtime.cpu import flag_value, has_flag
from sglang_rksc.runtime.model_path import supported_model_config
from sglang_rksc.runtime.models import shipped_for

AUTO_ADAPTER = "auto"  # RkscConfig.packet_adapter's default: the one shipped for the served model
NO_ADAPTER = "none"
# torch_native: the CPU path (torch; on a GPU our Triton kernels); triton: SGLang's GPU backend, whose prefill
# our hook replaces, in batches that copied packets, by the same kernels
PACKET_BACKENDS = ("torch_native", "triton")


def resolve(settings: RkscConfig, model_path: str, argv: list[str]) -> RkscConfig:
    """The settings with the packet adapter resolved (a file, or 'none'); ValueError when this launch cannot
    reuse packets."""
    if not settings.packets:
        return settings
    # keys are turned by the layers' rotary embedding
    model_config = supported_model_config(model_path, "--rksc-packets on")
    page = flag_value(argv, "--page-size")
    if page is not None and page != "1":
        raise ValueError(f"--rksc-packets on needs --page-size 1 (packets are copied token by token), got {page}")
    kv_dtype = flag_value(argv, "--kv-cache-dtype")
    if kv_dtype not in (None, "auto", "bf16", "bfloat16"):  # scaled fp8/fp4 keys cannot be turned and copied
        raise ValueError(f"--rksc-packets on needs --kv-cache-dtype auto or bfloat16, got {kv_dtype}")
    for flag in ("--attention-backend", "--prefill-attention-backend"):
        backend = flag_value(argv, flag)
        if backend is not None and backend not in PACKET_BACKENDS:
            raise ValueError(
                f"--rksc-packets on needs {flag} {' or '.join(PACKET_BACKENDS)} (the backends whose prefill it "
                f"extends), got {backend}"
            )
    for flag in (
        "--enable-mixed-chunk",
        "--speculative-algorithm",
        "--disable-radix-cache",
        "--enable-piecewise-cuda-graph",
    ):
        if has_flag(argv, flag):
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


def gpu_backend_flags(settings: RkscConfig, argv: list[str]) -> list[str]:
    """On a GPU, the attention backend packets need when none was named (SGLang would pick flashinfer or fa3,
    whose prefill does not know copied positions); on a CPU the launcher's defaults name torch_native."""
    if settings.packets and flag_value(argv, "--attention-backend") is None:
        # head compression's attention is torch_native's, which packets extend too
        return ["--attention-backend", "torch_native" if settings.heads.sparsity > 0 else "triton"]
    return []


def _adapter_file(choice: str, model_path: str) -> Path | None:
    if choice == NO_ADAPTER:
        return None
    return Path(choice) if choice != AUTO_ADAPTER else shipped_for(model_path, packaged)
