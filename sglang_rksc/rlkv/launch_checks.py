"""What the launcher checks before a server with head compression starts, each failure in one line."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from sglang_rksc.config import RkscConfig
from sglang_rksc.rlkv.head_mask import HeadMaskError, HeadScores, packaged, random_seed
from sglang_rksc.runtime.cpu import flag_value
from sglang_rksc.runtime.model_path import supported_model_config
from sglang_rksc.runtime.models import shipped_for


def resolve(settings: RkscConfig, model_path: str, argv: list[str]) -> RkscConfig:
    """The settings with the head-mask file resolved; ValueError when this launch cannot compress heads."""
    heads = settings.heads
    if heads.sparsity <= 0:
        return settings
    model_config = supported_model_config(model_path, "head compression")
    for flag, allowed in (("--page-size", "1"), ("--attention-backend", "torch_native")):
        value = flag_value(argv, flag)
        if value is not None and value != allowed:
            raise ValueError(f"head compression needs {flag} {allowed} (the torch path), got {value}")
    if flag_value(argv, "--speculative-algorithm") is not None:
        raise ValueError("head compression does not support speculative decoding")
    try:
        seed = random_seed(heads.head_mask)
    except HeadMaskError as exc:
        raise ValueError(str(exc)) from None
    mask = Path(heads.head_mask) if heads.head_mask and seed is None else shipped_for(model_path, packaged)
    if mask is None:
        raise ValueError(
            "no head mask ships for this model: make one with python -m sglang_rksc.tools.rlkv.calibrate "
            "and pass it as --rksc-head-mask"
        )
    try:
        scores = HeadScores.load(mask)
    except HeadMaskError as exc:
        raise ValueError(str(exc)) from None
    if seed is not None:  # the control: the shipped scores dealt at random, written where the scheduler reads
        scores = scores.shuffled(seed)
        mask = Path(tempfile.gettempdir()) / f"rksc-head-mask-{mask.stem}-random{seed}.json"
        scores.save(mask)
    layers = model_config.get("num_hidden_layers")
    kv_heads = model_config.get("num_key_value_heads", model_config.get("num_attention_heads"))
    if (scores.num_layers, scores.num_kv_heads) != (layers, kv_heads):
        raise ValueError(
            f"head mask {mask} is for {scores.num_layers} layers x {scores.num_kv_heads} KV heads, "
            f"this model has {layers} x {kv_heads}"
        )
    resolved = dataclasses.replace(heads, head_mask=str(mask.resolve()))
    return dataclasses.replace(settings, heads=resolved)
