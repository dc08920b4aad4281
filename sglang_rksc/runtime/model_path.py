"""Check a `--model-path` before SGLang tries to load it.

SGLang would try a download for a name it cannot find locally; sglang_rksc
never downloads at run time, so a model must be a local folder or already be
in the Hugging Face cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Causal-LM classes whose decoder layers our server-side features reach into (attention, rotary embedding).
LAYERED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


class ModelPathError(ValueError):
    """The model path does not name a usable model."""


def _looks_like_repo_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith(("/", ".", "~"))


def _cached_hub_folder(name: str) -> Path | None:
    """The snapshot folder of a Hugging Face repo id already in the local cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        return None
    return Path(found).parent if isinstance(found, str) else None


def check_model_path(model_path: str) -> Path:
    """Return the local folder for `model_path`, or raise ModelPathError saying why not."""
    path = Path(model_path).expanduser()
    if not path.exists():
        cached = _cached_hub_folder(model_path) if _looks_like_repo_id(model_path) else None
        if cached is not None:
            return cached
        raise ModelPathError(
            f"model path {model_path!r} is neither a local folder nor in the Hugging Face cache "
            "(give a local model folder; sglang-rksc does not download models)"
        )
    if not path.is_dir():
        raise ModelPathError(f"model path {model_path!r} is a file, not a Hugging Face model folder")
    if not (path / "config.json").is_file():
        raise ModelPathError(f"model path {model_path!r} has no config.json: not a Hugging Face model folder")
    if not any(next(path.glob(p), None) for p in _WEIGHT_PATTERNS):
        raise ModelPathError(f"model path {model_path!r} has a config.json but no weight files")
    return path


def supported_model_config(model_path: str, feature: str) -> dict[str, Any]:
    """The config.json of a local model folder whose architecture `feature` supports; ValueError otherwise."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{feature} needs a local model folder with config.json, got {model_path}")
    config = json.loads(config_file.read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    if architecture not in LAYERED_ARCHITECTURES:
        raise ValueError(f"{feature} supports {', '.join(LAYERED_ARCHITECTURES)}; this model is {architecture}")
    return config
