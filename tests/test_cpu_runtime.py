"""The CPU runtime pieces: flag defaults, GPU-only flags, the sgl_kernel stand-in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sglang_rksc.runtime import cpu

ON_CPU_ONLY = pytest.mark.skipif(cpu.cuda_usable(), reason="checks a machine without CUDA")


def test_cpu_defaults_fill_only_missing_flags():
    out = cpu.apply_cpu_defaults(["--max-total-tokens=4096", "--dtype", "float32"])
    assert out[:3] == ["--max-total-tokens=4096", "--dtype", "float32"]
    assert cpu.flag_value(out, "--dtype") == "float32"
    assert cpu.flag_value(out, "--max-total-tokens") == "4096"
    assert cpu.flag_value(out, "--device") == "cpu"
    assert cpu.flag_value(out, "--attention-backend") == "torch_native"
    assert out.count("--disable-overlap-schedule") == 1
    assert cpu.apply_cpu_defaults(out) == out  # idempotent


def test_flag_value_last_one_wins():
    argv = ["--port", "1", "--port=2", "--host", "h"]
    assert cpu.flag_value(argv, "--port") == "2"
    assert cpu.flag_value(argv, "--host") == "h"
    assert cpu.flag_value(argv, "--device") is None


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--device", "cuda"], "--device cuda"),
        (["--attention-backend", "flashinfer"], "--attention-backend flashinfer"),
        (["--decode-attention-backend=fa3"], "--decode-attention-backend fa3"),
        (["--sampling-backend", "flashinfer"], "--sampling-backend flashinfer"),
        (["--speculative-algorithm", "NGRAM"], "--speculative-algorithm"),
        (["--enable-deterministic-inference"], "--enable-deterministic-inference"),
    ],
)
def test_gpu_only_flags_are_named(argv, needle):
    why = cpu.gpu_only_flag_error(argv)
    assert why is not None and needle in why and "\n" not in why


def test_cpu_flags_pass():
    assert cpu.gpu_only_flag_error(["--device", "cpu", "--attention-backend", "torch_native", "--port", "1"]) is None
    assert cpu.gpu_only_flag_error(cpu.apply_cpu_defaults([])) is None


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


def test_standin_imports_and_raises_clearly_when_called():
    env = dict(os.environ, PYTHONPATH=str(cpu.STANDIN_DIR))
    done = _run(
        """
        import sgl_kernel
        from sgl_kernel import assign_req_to_token_pool_cpu
        assert sgl_kernel.STANDIN
        try:
            assign_req_to_token_pool_cpu(1, 2)
        except NotImplementedError as exc:
            print("RAISED", exc)
        """,
        env,
    )
    assert done.returncode == 0, done.stderr
    assert "RAISED sgl_kernel.assign_req_to_token_pool_cpu was called" in done.stdout
    assert "stand-in" in done.stdout


def test_standin_reaches_spawned_children(tmp_path: Path):
    """The scheduler runs in a spawned child: it must import the stand-in too."""
    script = tmp_path / "spawn_check.py"
    script.write_text(
        textwrap.dedent(
            """
        import multiprocessing as mp
        from sglang_rksc.runtime import cpu

        def child(q):
            import os, sgl_kernel
            q.put((getattr(sgl_kernel, "STANDIN", False), os.environ.get("SGLANG_USE_CPU_ENGINE")))

        if __name__ == "__main__":
            cpu.activate_cpu_runtime(use_standin=True)
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print("CHILD", q.get(timeout=60))
            p.join()
        """
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SGLANG_USE_CPU_ENGINE")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "CHILD (True, '1')" in done.stdout


@ON_CPU_ONLY
def test_real_sgl_kernel_probe_is_not_fooled_by_the_standin(monkeypatch):
    # This machine has no CUDA: the real wheel cannot load, whatever is on PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", str(cpu.STANDIN_DIR))
    assert cpu.real_sgl_kernel_loads() is False
    assert cpu.standin_needed() is True


def test_a_working_sgl_kernel_is_never_shadowed(tmp_path: Path, monkeypatch):
    """Where some `sgl_kernel` imports (as on a GPU machine), the stand-in is not needed."""
    fake = tmp_path / "sgl_kernel"
    fake.mkdir()
    (fake / "__init__.py").write_text("WORKING = True\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert cpu.real_sgl_kernel_loads() is True
    assert cpu.standin_needed() is False


def test_the_probes_answer_is_kept_until_what_it_depends_on_changes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SGLANG_RKSC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    asked = []
    monkeypatch.setattr(cpu, "real_sgl_kernel_loads", lambda: asked.append(1) or False)
    assert cpu.real_sgl_kernel_loads_remembered() is False
    assert cpu.real_sgl_kernel_loads_remembered() is False and len(asked) == 1  # kept
    # Another sgl_kernel on the path a fresh interpreter searches: asked again, and kept apart.
    fake = tmp_path / "other" / "sgl_kernel"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WORKING = True\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    monkeypatch.setattr(cpu, "real_sgl_kernel_loads", lambda: asked.append(2) or True)
    assert cpu.real_sgl_kernel_loads_remembered() is True and asked == [1, 2]
    (fake / "__init__.py").write_text("WORKING = 'reinstalled'\n")
    os.utime(fake / "__init__.py", ns=(1, 1))  # a reinstall: other files
    assert cpu.real_sgl_kernel_loads_remembered() is True and asked == [1, 2, 2]
    # A file cut short is no answer: the probe runs again.
    (tmp_path / "cache" / cpu.PROBE_FILE).write_text("{not json")
    monkeypatch.delenv("PYTHONPATH")
    monkeypatch.setattr(cpu, "real_sgl_kernel_loads", lambda: asked.append(3) or False)
    assert cpu.real_sgl_kernel_loads_remembered() is False and asked == [1, 2, 2, 3]
