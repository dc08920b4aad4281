"""Make the real SGLang server run on a machine with no usable CUDA.

Three pieces, all applied before any `sglang.srt` module is imported (several
of them read the environment at import time):
- `SGLANG_USE_CPU_ENGINE=1`, without which the server fails at RoPE setup;
- the `sgl_kernel` stand-in (see `sgl_kernel_standin/sgl_kernel/__init__.py`),
  put first on `sys.path` and `PYTHONPATH` so that the scheduler's spawned
  children import it too, and only when the real `sgl_kernel` cannot load and
  no CUDA device is usable, so it never shadows a working kernel;
- CPU defaults for the server flags (`CPU_DEFAULT_ARGS`).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent / "sgl_kernel_standin"

# Flag -> value (None for a switch) applied on a CPU unless the user gave the flag.
CPU_DEFAULT_ARGS: dict[str, str | None] = {
    "--device": "cpu",
    "--attention-backend": "torch_native",
    "--dtype": "bfloat16",
    "--max-total-tokens": "16384",
    "--disable-overlap-schedule": None,
    # An idle scheduler otherwise spins a whole core: half of a 2-core machine.
    "--sleep-on-idle": None,
}


def cuda_usable() -> bool:
    """True when torch sees at least one CUDA device."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


def _env_without_standin(environ: MutableMapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != STANDIN_DIR]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def real_sgl_kernel_loads(timeout_s: float = 180.0) -> bool:
    """Try `import sgl_kernel` in a fresh interpreter, with the stand-in off the path.

    A subprocess, because a failed import of a CUDA extension can leave a
    half-initialised module state behind in this process.
    """
    probe = "import sgl_kernel, sys; sys.exit(2 if getattr(sgl_kernel, 'STANDIN', False) else 0)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=_env_without_standin(os.environ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


PROBE_FILE = "sgl_kernel_probe.json"  # in the cache root: probe answers by what they depend on
PROBE_ANSWERS_KEPT = 16


def _probe_key(environ: MutableMapping[str, str]) -> str:
    """What the probe's answer depends on: this interpreter, the PYTHONPATH a fresh one gets, and the files of
    the `sgl_kernel` and `torch` it would import (a reinstall changes their modification times)."""
    pythonpath = _env_without_standin(environ)["PYTHONPATH"]
    search = [p for p in pythonpath.split(os.pathsep) if p]
    search += [p for p in sys.path if p and Path(p).resolve() != STANDIN_DIR]
    parts = [sys.executable, pythonpath]
    for name in ("sgl_kernel", "torch"):
        spec = importlib.machinery.PathFinder.find_spec(name, search)
        origin = spec.origin if spec is not None else None
        stamp = os.stat(origin).st_mtime_ns if origin and os.path.exists(origin) else None
        parts.append(f"{name}={origin}@{stamp}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def real_sgl_kernel_loads_remembered(environ: MutableMapping[str, str] = os.environ) -> bool:
    """`real_sgl_kernel_loads`, its answer kept in the cache root per `_probe_key`: the probe is a fresh
    interpreter importing torch, seconds on every launch, and its answer changes only with what the key holds."""
    from sglang_rksc.runtime.models import cache_root

    path = cache_root() / PROBE_FILE
    key = _probe_key(environ)
    try:
        answers = json.loads(path.read_text())
        if not isinstance(answers, dict):
            answers = {}
    except (OSError, ValueError):
        answers = {}
    if isinstance(answers.get(key), bool):
        return answers[key]
    loads = real_sgl_kernel_loads()
    answers = {k: v for k, v in list(answers.items())[-(PROBE_ANSWERS_KEPT - 1) :]}
    answers[key] = loads
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(answers))
        partial.replace(path)  # whole or not at all: launches in parallel read it
    except OSError:
        pass  # unwritable cache: probe again next time
    return loads


def standin_needed() -> bool:
    """The stand-in is for CPU-only machines whose real `sgl_kernel` cannot load."""
    return not cuda_usable() and not real_sgl_kernel_loads_remembered()


def standin_active() -> bool:
    """Whether `sgl_kernel` in this process resolves to the stand-in."""
    import importlib.util

    spec = importlib.util.find_spec("sgl_kernel")
    return bool(spec and spec.origin and Path(spec.origin).resolve().is_relative_to(STANDIN_DIR))


def install_standin(environ: MutableMapping[str, str] = os.environ) -> None:
    """Put the stand-in first on this process's path and on its children's."""
    path = str(STANDIN_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != path]
    environ["PYTHONPATH"] = os.pathsep.join([path, *parts])
    # A failed import of the real one may have been cached as missing.
    sys.modules.pop("sgl_kernel", None)


def activate_cpu_runtime(environ: MutableMapping[str, str] = os.environ, *, use_standin: bool) -> None:
    """Environment for SGLang's CPU engine; call before importing `sglang.srt`."""
    environ["SGLANG_USE_CPU_ENGINE"] = "1"
    if use_standin:
        install_standin(environ)


def apply_cpu_defaults(argv: list[str]) -> list[str]:
    """Append the CPU defaults for every flag the user did not give."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    out = list(argv)
    for flag, value in CPU_DEFAULT_ARGS.items():
        if flag in given:
            continue
        out.append(flag)
        if value is not None:
            out.append(value)
    return out


# Values of these flags that only work with a GPU; anything else passes through.
_CPU_ATTENTION_BACKENDS = {"torch_native", "intel_amx"}
_ATTENTION_FLAGS = ("--attention-backend", "--prefill-attention-backend", "--decode-attention-backend")
_GPU_ONLY_SWITCHES = {
    "--enable-deterministic-inference": "its attention backends are all GPU kernels",
    "--enable-flashinfer-allreduce-fusion": "flashinfer is a CUDA library",
    "--enable-nccl-nvls": "NVLink SHARP needs NVIDIA GPUs",
    "--enable-symm-mem": "symmetric memory needs NVIDIA GPUs",
    "--enable-profile-cuda-graph": "there are no CUDA graphs on a CPU",
}


def has_flag(argv: list[str], *flags: str) -> bool:
    """Whether any of `flags` is given (a switch, `--flag v` or `--flag=v`)."""
    return any(a in flags or a.split("=", 1)[0] in flags for a in argv if a.startswith("--"))


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value given for `flag` (`--flag v` or `--flag=v`), last one wins."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def gpu_only_flag_error(argv: list[str]) -> str | None:
    """Why these server flags cannot run on a CPU, or None when they can."""
    device = flag_value(argv, "--device")
    if device is not None and device != "cpu":
        return f"--device {device} needs that accelerator, but this machine has no usable one (use --device cpu)"
    for flag in _ATTENTION_FLAGS:
        backend = flag_value(argv, flag)
        if backend is not None and backend not in _CPU_ATTENTION_BACKENDS:
            return f"{flag} {backend} is GPU-only; on a CPU use torch_native (the default here)"
    if flag_value(argv, "--sampling-backend") == "flashinfer":
        return "--sampling-backend flashinfer is GPU-only; on a CPU use pytorch (the default here)"
    if flag_value(argv, "--speculative-algorithm") is not None:
        return "--speculative-algorithm needs sgl_kernel's CUDA kernels and does not start on a CPU"
    for arg in argv:
        why = _GPU_ONLY_SWITCHES.get(arg.split("=", 1)[0])
        if why:
            return f"{arg} is GPU-only: {why}"
    return None
