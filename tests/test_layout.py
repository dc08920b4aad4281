"""The package layout keeps its rules: no import loops between packages, the cache and the kernels import no
feature, the server never imports a tool, and files sit where they are imported from."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sglang_rksc"
FEATURES = {"asks", "rsbcm", "reuse", "spans", "rlkv", "packets", "exit", "drafts"}
TOOLS = {"tools", "bench", "programs"}  # beside the server: never imported by what the server runs
SERVER = {"cache", "srt", "config", "settings", "wire", "kernels", "runtime", "launch_server"} | FEATURES


def _imports() -> dict[str, set[str]]:
    """Package -> the packages of ours it imports (at the top or inside functions)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        source = parts[0] if len(parts) > 1 else parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sglang_rksc"):
                names = [node.module] if node.module != "sglang_rksc" else [f"sglang_rksc.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("sglang_rksc.")]
            else:
                continue
            for name in names:
                target = name.split(".")[1]
                if target != source:
                    edges[source].add(target)
    return edges


def _reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def test_no_import_loop_between_packages():
    edges = _imports()
    loops = sorted((a, b) for a in edges for b in edges[a] if a in _reachable(edges, b))
    assert not loops, loops


def test_the_cache_and_the_kernels_import_no_feature():
    edges = _imports()
    assert edges["cache"] <= {"kernels", "wire"}, edges["cache"]
    assert not edges["kernels"], edges["kernels"]


def test_the_server_imports_no_tool():
    edges = _imports()
    for package in SERVER:
        assert not (_reachable(edges, package) & TOOLS), (package, _reachable(edges, package) & TOOLS)


def test_files_sit_where_they_are_imported_from():
    """No folder is mapped into the package under another name, and no top-level code folder is left."""
    setup = (PACKAGE.parent / "setup.py").read_text()
    assert "package_dir" not in setup
    for name in ("kernels", "programs", "tools"):
        assert not (PACKAGE.parent / name).exists()
        assert (PACKAGE / name / "__init__.py").exists()


def test_the_gpu_checks_import_no_sglang():
    """They run on a lent GPU machine from the repository root, where SGLang cannot be carried."""
    import subprocess
    import sys

    code = (
        "import sys, sglang_rksc.tools.gpu.check_packet_extend, sglang_rksc.tools.gpu.check_sink_window\n"
        "print(sorted(m for m in sys.modules if m == 'sglang' or m.startswith('sglang.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
