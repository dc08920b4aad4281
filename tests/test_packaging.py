"""The project installs the ordinary way: a wheel holds every module and SGLang's plugin entry point loads.

The wheel is built from a copy of the working tree, installed without dependencies into a temporary
folder (not editable), and a fresh interpreter imports everything from that folder, the venv giving
only the dependencies.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the installed package must hold besides modules.
DATA_FILES = (
    "sglang_rksc/programs/data/gsm8k/test.jsonl",
    "sglang_rksc/programs/data/gsm8k/LICENSE",
    "sglang_rksc/programs/data/game24/24.csv",
    "sglang_rksc/programs/data/game24/LICENSE",
    "sglang_rksc/rlkv/masks/smollm2-135m.json",
    "sglang_rksc/runtime/cost_models/h100-7b.json",
)

CHECK = r"""
import importlib, importlib.metadata as md, json, pkgutil, sys
site = sys.argv[1]
import sglang_rksc
assert sglang_rksc.__file__.startswith(site), sglang_rksc.__file__
eps = [ep for ep in md.entry_points(group="sglang.srt.plugins") if ep.name == "rksc"]
ours = [ep for ep in eps if str(ep.dist.locate_file("")).startswith(site)]
assert ours, [str(ep.dist.locate_file("")) for ep in eps]
ours[0].load()()  # SGLang's plugin loader calls register()
modules = []
for info in pkgutil.walk_packages(sglang_rksc.__path__, "sglang_rksc."):
    module = importlib.import_module(info.name)
    assert module.__file__ is None or module.__file__.startswith(site), (info.name, module.__file__)
    modules.append(info.name)
print(json.dumps(modules))
"""


# Builds and installs the wheel, then imports every module in a fresh Python: not in the fast tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    # A copy without build leftovers: what a fresh clone holds.
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "results"),
    )
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(work / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (work / "dist").glob("sglang_rksc-*.whl")
    site = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    return site


def test_the_wheel_holds_every_package_and_data_file(installed):
    folder = REPO / "sglang_rksc"  # kernels, programs and tools included: every file sits where it is imported from
    for path in folder.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(folder)
        assert (installed / "sglang_rksc" / relative).is_file(), relative
    for name in DATA_FILES:
        assert (installed / name).is_file(), name


def test_the_installed_plugin_loads_and_every_module_imports(installed):
    env = {"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(installed)],
        env=env,
        cwd=installed.parent,  # not the repository, which `python -c` would put first on the path
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    for expected in ("sglang_rksc.exit.layer_exit", "sglang_rksc.reuse.store", "sglang_rksc.programs.tree_of_thought"):
        assert expected in modules


def test_the_wheel_declares_sglangs_plugin_entry_point(installed):
    (wheel,) = installed.parent.joinpath("dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(entry_points).decode()
    assert "[sglang.srt.plugins]" in text and "rksc = sglang_rksc.srt.plugin:register" in text
    # the tools' entry points
    assert "sglang-rksc-calibrate-heads = sglang_rksc.tools.rlkv.calibrate:main" in text
    assert "sglang-rksc-train-adapter = sglang_rksc.tools.packets.train_adapter:main" in text
