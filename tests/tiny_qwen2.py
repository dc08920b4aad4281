"""A tiny random Qwen2 model (same architecture class as Qwen2.5, a few layers, GQA, its own LM head),
built from a config with the default model's tokenizer: the Qwen2 code paths in CI without the 1.1 GB model."""

from __future__ import annotations

from pathlib import Path

LAYERS = 4
HIDDEN = 64
HEADS, KV_HEADS = 4, 2


def build_tiny_qwen2(folder: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        tie_word_embeddings=False,  # a separate LM head, as the 1.5B model has
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
