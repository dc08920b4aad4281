"""Start SGLang's HTTP server with the sglang-rksc plugin and the `rksc` radix cache.

Every SGLang server flag passes through. On top of stock SGLang this launcher
- uses the embedded default model when no `--model-path` is given;
- selects `--radix-cache-backend rksc` unless another backend is named
  (`--radix-cache-backend default` keeps SGLang's own selection chain);
- on a machine with no usable CUDA, sets up the CPU runtime (see
  `sglang_rksc.runtime.cpu`) and the CPU defaults for the flags not given;
- turns bad input (unknown flags, a missing model, a GPU-only flag on a CPU)
  into one line on stderr and exit status 2, before anything is started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import NoReturn

from sglang_rksc import config as rksc_config
from sglang_rksc.runtime import cpu
from sglang_rksc.runtime.model_path import ModelPathError, check_model_path
from sglang_rksc.runtime.models import DEFAULT_MODEL, MODELS, ModelPreparationError
from sglang_rksc.runtime.models import prepare as prepare_model
from sglang_rksc.wire import BACKEND_NAME, PLUGIN_NAME, rksc_state

PROG = "python -m sglang_rksc.launch_server"
STOCK_BACKEND = "default"  # our value for "omit --radix-cache-backend"
DEFAULT_BACKEND = BACKEND_NAME
LOG_PREFIX = "sglang-rksc:"

HELP_HEAD = f"""usage: {PROG} [SGLang server flags]

Starts SGLang 0.5.23's server with the sglang-rksc plugin loaded.

sglang-rksc defaults (each applies only when you do not give the flag):
  --model-path PATH          the embedded SmolLM2-135M-Instruct (converted once
                             to bf16 in ~/.cache/sglang_rksc); PATH must be a
                             local Hugging Face folder or already in the HF cache
  --model NAME               a named embedded model instead: smollm2-135m (the
                             default), qwen2.5-coder-1.5b (bash scripts/setup.sh
                             --quality-model), qwen2.5-coder-0.5b; a --model that
                             is not a name is a path, as in SGLang
  --radix-cache-backend NAME rksc; 'default' keeps SGLang's own cache selection
  --rksc-* flags             sglang-rksc's own settings, listed below; they
                             need the rksc backend
  --radix-eviction-policy rsbcm
                             RSBCM: reasoning-structure eviction (rksc backend;
                             settings reuse_weight, depth_weight, half_life
                             through --radix-eviction-policy-config, see README)
  on a CPU-only machine:     {" ".join(k if v is None else f"{k} {v}" for k, v in cpu.CPU_DEFAULT_ARGS.items())}

All other flags are SGLang's own:
"""


class LaunchError(Exception):
    """Bad input to the launcher: reported as one line, exit status 2."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but errors raise instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise LaunchError(message)


@dataclass
class LaunchPlan:
    argv: list[str]  # what SGLang's own parser receives
    model_path: str
    on_cpu: bool
    standin: bool
    backend: str | None  # None: SGLang's built-in selection chain
    url: str
    rksc: rksc_config.RkscConfig


def _drop_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _sglang_parser() -> argparse.ArgumentParser:
    from sglang.srt.server_args import ServerArgs

    parser = _OneLineParser(prog=PROG, add_help=False)
    ServerArgs.add_cli_args(parser)
    return parser


def _check_plugin_installed() -> None:
    if not entry_points(group="sglang.srt.plugins", name=PLUGIN_NAME):
        raise LaunchError(
            "the sglang-rksc package is not installed, so SGLang cannot find its plugin "
            "(run `pip install -e .` in the project folder)"
        )


def plan_launch(argv: list[str], *, cuda: bool | None = None) -> LaunchPlan:
    """Validate `argv` and work out the SGLang argv; sets up the CPU runtime and our settings."""
    _check_plugin_installed()
    # Drafts are a speculative algorithm and audits read the logits, not cache features: any cache backend.
    given_rksc = any(a.startswith("--rksc-") and not a.startswith(("--rksc-draft", "--rksc-audit")) for a in argv)
    try:
        argv, settings = rksc_config.split_args(argv)
    except rksc_config.ConfigError as exc:
        raise LaunchError(str(exc)) from exc
    cuda = cpu.cuda_usable() if cuda is None else cuda
    on_cpu = not cuda or cpu.flag_value(argv, "--device") == "cpu"
    if on_cpu:
        why = cpu.gpu_only_flag_error(argv)
        if why:
            raise LaunchError(why)
    standin = not cuda and not cpu.real_sgl_kernel_loads_remembered()
    if on_cpu:
        # Before the first `sglang.srt` import: several modules read it at import time.
        cpu.activate_cpu_runtime(use_standin=standin)

    out = list(argv)
    name = cpu.flag_value(out, "--model")
    if name in MODELS:  # a named embedded model: prepared (verified, converted) once, never downloaded
        out = _drop_flag(out, "--model")
        if cpu.flag_value(out, "--model-path") is not None:
            raise LaunchError(f"give --model {name} or --model-path, not both")
    model_path = cpu.flag_value(out, "--model-path") or cpu.flag_value(out, "--model")
    if model_path is None:
        try:
            model_path = str(prepare_model(name if name in MODELS else DEFAULT_MODEL))
        except ModelPreparationError as exc:
            raise LaunchError(str(exc)) from exc
        out = ["--model-path", model_path, *out]
    else:
        try:
            check_model_path(model_path)
        except ModelPathError as exc:
            raise LaunchError(str(exc)) from exc

    backend = cpu.flag_value(out, "--radix-cache-backend")
    if backend is None:
        backend = DEFAULT_BACKEND
        out += ["--radix-cache-backend", backend]
    elif backend == STOCK_BACKEND:
        backend = None
        out = _drop_flag(out, "--radix-cache-backend")
    if given_rksc and backend != DEFAULT_BACKEND:
        raise LaunchError(
            f"--rksc-* flags other than --rksc-drafts and --rksc-audit-* need --radix-cache-backend "
            f"{DEFAULT_BACKEND}, not {backend or STOCK_BACKEND}"
        )
    from sglang_rksc.rsbcm import eviction  # imports sglang.srt: after the CPU runtime is set up
    from sglang_rksc.srt import seams

    try:
        eviction.check_policy_flags(
            cpu.flag_value(out, "--radix-eviction-policy"),
            cpu.flag_value(out, "--radix-eviction-policy-config"),
            backend,
        )
    except ValueError as exc:
        raise LaunchError(str(exc)) from exc
    from sglang_rksc.drafts import hooks as draft_checks
    from sglang_rksc.packets import launch_checks as packet_checks
    from sglang_rksc.rlkv import launch_checks

    try:
        settings = launch_checks.resolve(settings, model_path, out)
        settings = packet_checks.resolve(settings, model_path, out)
    except ValueError as exc:
        raise LaunchError(str(exc)) from exc
    from sglang_rksc.srt.parallel_checks import tp_refusal

    refusal = draft_checks.launch_refusal(settings, out) or tp_refusal(settings, out)
    if refusal:
        raise LaunchError(refusal)
    if settings.drafts.on:
        out += draft_checks.speculative_flags(settings)
    # The scheduler, a spawned child, reads them from its inherited environment.
    os.environ[rksc_config.ENV_VAR] = settings.to_env()
    if on_cpu:
        out = cpu.apply_cpu_defaults(out)
    else:
        out += packet_checks.gpu_backend_flags(settings, out)

    seams.install_registrations((seams.EVICTION_CHOICE, seams.SPECULATIVE))
    parser = _sglang_parser()
    _, unknown = parser.parse_known_args(out)
    if unknown:
        raise LaunchError(f"unrecognized argument(s): {' '.join(unknown)} (see --help)")

    with warnings.catch_warnings():  # SGLang's modules warn on import; the one line below is what matters
        warnings.simplefilter("ignore")
        try:
            seams.check()  # before anything starts: the pinned SGLang, every seam where the table says
        except seams.SeamError as exc:
            raise LaunchError(str(exc)) from exc
    host = cpu.flag_value(out, "--host") or "127.0.0.1"
    port = cpu.flag_value(out, "--port") or "30000"
    return LaunchPlan(out, model_path, on_cpu, standin, backend, f"http://{host}:{port}", settings)


def _local_url(url: str) -> str:
    # A server bound to all interfaces is reached on loopback.
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//127.0.0.1:")


def _get_json(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _report_when_ready(plan: LaunchPlan, stop: threading.Event) -> None:
    """Print one line once the server answers: where it listens, which tree cache is live."""
    base = _local_url(plan.url)
    while not stop.wait(1.0):
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                if resp.status != 200:
                    continue
            info = _get_json(base + "/server_info")
        except (urllib.error.URLError, OSError, ValueError):
            continue
        cache = rksc_state(info) or {}
        impl = cache.get("impl", "unknown")
        backend = cache.get("backend") or "SGLang default"
        disabled = " (disabled by --disable-radix-cache)" if cache.get("disabled") else ""
        semantic = ", semantic sharing on" if cache.get("semantic") else ""
        print(
            f"{LOG_PREFIX} ready at {plan.url}, radix cache backend: {backend} ({impl}){disabled}{semantic}", flush=True
        )
        return


def _print_help() -> None:
    print(HELP_HEAD)
    ours = argparse.ArgumentParser(
        prog=PROG, add_help=False, usage=argparse.SUPPRESS, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    rksc_config.add_arguments(ours.add_argument_group("sglang-rksc settings"))
    ours.print_help()
    print()
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog=PROG, add_help=False, usage=argparse.SUPPRESS)
    ServerArgs.add_cli_args(parser)
    parser.print_help()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _print_help()
        return 0
    try:
        plan = plan_launch(argv)
    except LaunchError as exc:
        print(f"{LOG_PREFIX} error: {exc}", file=sys.stderr)
        return 2

    allowed = os.environ.get("SGLANG_PLUGINS")
    if allowed and PLUGIN_NAME not in {p.strip() for p in allowed.split(",")}:
        os.environ["SGLANG_PLUGINS"] = f"{allowed},{PLUGIN_NAME}"
    device = "cpu" if plan.on_cpu else "gpu"
    standin = ", sgl_kernel stand-in" if plan.standin else ""
    semantic = ""
    asks = plan.rksc.semantic
    if asks.on:
        semantic = (
            f", semantic sharing on (threshold {asks.threshold}, probe "
            f"{f'at {asks.probe_threshold}' if asks.probe else 'off'})"
        )
    print(
        f"{LOG_PREFIX} starting SGLang on {device}{standin}: model {plan.model_path}, "
        f"radix cache backend {plan.backend or 'SGLang default'}{semantic}, listening on {plan.url}",
        flush=True,
    )

    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    load_plugins()
    try:
        server_args = prepare_server_args(plan.argv)
    except (ValueError, TypeError, NotImplementedError) as exc:
        print(f"{LOG_PREFIX} error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    threading.Thread(target=_report_when_ready, args=(plan, stop), daemon=True).start()
    started = time.monotonic()
    try:
        run_server(server_args)
    finally:
        stop.set()
        kill_process_tree(os.getpid(), include_parent=False)
    print(f"{LOG_PREFIX} server stopped after {time.monotonic() - started:.0f} s", flush=True)
    return 0
