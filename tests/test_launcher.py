"""The launcher: how it builds SGLang's flags, and how it refuses bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_rksc.runtime import cpu
from sglang_rksc.srt import launcher
from sglang_rksc.srt.launcher import LaunchError, plan_launch


@pytest.fixture
def isolated_runtime(monkeypatch: pytest.MonkeyPatch):
    """plan_launch sets up the CPU runtime in this process: undo it after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(cpu, "real_sgl_kernel_loads_remembered", lambda environ=None: False)
    saved = dict(os.environ)
    os.environ.pop("SGLANG_USE_CPU_ENGINE", None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_defaults_on_a_cpu(isolated_runtime, default_model_dir: Path):
    plan = plan_launch(["--port", "31234"], cuda=False)
    assert plan.on_cpu and plan.standin and plan.backend == "rksc"
    assert plan.model_path == str(default_model_dir)
    assert cpu.flag_value(plan.argv, "--model-path") == str(default_model_dir)
    assert cpu.flag_value(plan.argv, "--radix-cache-backend") == "rksc"
    assert cpu.flag_value(plan.argv, "--device") == "cpu"
    assert plan.url == "http://127.0.0.1:31234"
    assert os.environ["SGLANG_USE_CPU_ENGINE"] == "1"
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(cpu.STANDIN_DIR)


def test_user_flags_win(isolated_runtime, default_model_dir: Path):
    plan = plan_launch(
        ["--model-path", str(default_model_dir), "--max-total-tokens", "2048", "--radix-cache-backend", "default"],
        cuda=False,
    )
    assert plan.backend is None and "--radix-cache-backend" not in plan.argv  # SGLang's own chain
    assert cpu.flag_value(plan.argv, "--max-total-tokens") == "2048"
    assert plan.argv.count("--model-path") == 1


def test_gpu_machine_gets_no_standin_and_no_cpu_defaults(isolated_runtime, default_model_dir: Path, monkeypatch):
    monkeypatch.setattr(cpu, "real_sgl_kernel_loads_remembered", lambda environ=None: True)
    plan = plan_launch(["--model-path", str(default_model_dir), "--attention-backend", "flashinfer"], cuda=True)
    assert not plan.on_cpu and not plan.standin
    assert cpu.flag_value(plan.argv, "--device") is None
    assert "SGLANG_USE_CPU_ENGINE" not in os.environ
    assert str(cpu.STANDIN_DIR) not in sys.path


def test_gpu_only_flag_is_refused_on_a_cpu(isolated_runtime):
    with pytest.raises(LaunchError, match="flashinfer is GPU-only"):
        plan_launch(["--attention-backend", "flashinfer"], cuda=False)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--rksc-head-compression", "0.4"], "--rksc-head-compression"),
        (["--rksc-drafts", "on"], "--rksc-drafts on"),
        (["--rksc-audit-rate", "0.5"], "--rksc-audit-rate"),
    ],
)
def test_a_mechanism_not_rank_aware_is_refused_under_tensor_parallelism(
    isolated_runtime, default_model_dir: Path, flags, named
):
    with pytest.raises(LaunchError, match=f"^{named} does not run with --tp-size 2: .*replicas behind a router"):
        plan_launch(["--model-path", str(default_model_dir), "--tp-size", "2", *flags], cuda=False)


def test_tensor_parallel_decisions_by_mechanism():
    from sglang_rksc.config import RkscConfig
    from sglang_rksc.srt.parallel_checks import tp_refusal, tp_size

    assert tp_size(["--tp", "4"]) == 4 and tp_size(["--tp-size=2"]) == 2 and tp_size([]) == 1
    plain = RkscConfig()
    assert tp_refusal(plain, ["--tp-size", "2"]) is None  # the tree, RSBCM, reuse: kept under TP
    assert tp_refusal(RkscConfig(packets=True), ["--tp-size", "2"]).startswith("--rksc-packets")
    assert tp_refusal(RkscConfig(packets=True), ["--tp-size", "1"]) is None


def test_unknown_flag_is_refused(isolated_runtime, default_model_dir: Path):
    with pytest.raises(LaunchError, match="unrecognized argument.*--no-such-flag"):
        plan_launch(["--model-path", str(default_model_dir), "--no-such-flag"], cuda=False)


def _launch(*args: str) -> subprocess.CompletedProcess[str]:
    # A hang would fail here through the timeout.
    return subprocess.run(
        [sys.executable, "-m", "sglang_rksc.launch_server", *args], capture_output=True, text=True, timeout=180
    )


@pytest.mark.slow  # each run is a fresh Python that imports SGLang
@pytest.mark.parametrize(
    "args, message",
    [
        (["--model-path", "/no/such/model"], "is neither a local folder nor in the Hugging Face cache"),
        (["--model-path", "no-such-org/no-such-model"], "is neither a local folder nor in the Hugging Face cache"),
        (["--model-path", str(Path(__file__).parent)], "has no config.json"),
        (["--no-such-flag", "1"], "unrecognized argument(s): --no-such-flag 1"),
        (["--port", "not-a-port"], "argument --port: invalid int value"),
        (["--attention-backend", "fa3"], "--attention-backend fa3 is GPU-only"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args, message):
    if cpu.cuda_usable() and "GPU-only" in message:
        pytest.skip("GPU-only flags are fine on a GPU machine")
    done = _launch(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sglang-rksc: error: ") and message in lines[0]
    assert "starting SGLang" not in done.stdout


@pytest.mark.slow  # each run is a fresh Python that imports SGLang
def test_help_explains_our_defaults_and_sglang_flags():
    done = _launch("--help")
    assert done.returncode == 0
    assert "--radix-cache-backend NAME rksc" in done.stdout
    assert "--max-running-requests" in done.stdout  # SGLang's own flags follow


def test_console_script_is_installed():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="sglang-rksc-server")
    assert script.load() is launcher.main


def test_a_port_taken_before_the_server_binds_it_is_chosen_again(launch_server, monkeypatch: pytest.MonkeyPatch):
    """`free_port`'s answer can be taken by another process before SGLang binds it (servers starting side by
    side). SGLang then logs the failed bind and stays up without serving; the launcher reads that in the log and
    starts again on another port instead of waiting out its startup timeout."""
    import socket

    import requests

    from sglang_rksc.runtime import server_process

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))  # bound, not listening: our own check passes, SGLang's bind fails
        taken = holder.getsockname()[1]
        first = iter([taken])
        choose = server_process.free_port
        monkeypatch.setattr(server_process, "free_port", lambda host="127.0.0.1": next(first, None) or choose(host))
        with launch_server(log_name="taken", startup_timeout_s=300) as server:
            assert server.port != taken
            assert requests.get(server.url + "/health", timeout=30).status_code == 200
