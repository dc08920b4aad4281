"""The adapter's training data: gather prompts of the calibration slice (GSM8K 0-299), made with transformers.

Per problem, the same case as the packet benchmark (`gather_cases`): greedy solutions after the question, each
opened with its own phrase; the gather prompt over them; and the full computation's greedy answer to it. The
examples are kept in a JSON-lines file, so that training again does not generate again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sglang_rksc.lang.gather import gather_prompt
from sglang_rksc.programs.gsm8k import Problem
from sglang_rksc.tools.packets.distill import GatherExample
from sglang_rksc.tools.packets.gather_cases import case_prompts


def load_model(path: str | Path) -> tuple[Any, Any]:
    """A frozen float32 transformers model and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    model.requires_grad_(False)
    return model, tokenizer


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a generation: the tokenizer's and the generation config's end-of-sequence ids."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    listed = configured if isinstance(configured, list) else [configured]
    return {t for t in (tokenizer.eos_token_id, *listed) if isinstance(t, int)}


def greedy(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Each prompt's greedy continuation (batched, left-padded), up to and including its end-of-sequence token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad
        )
    stops = stop_ids(model, tokenizer)
    result = []
    for row in out[:, width:].tolist():
        ended = next((i for i, t in enumerate(row) if t in stops), None)
        result.append(row if ended is None else row[: ended + 1])
    return result


def make_example(
    model: Any, tokenizer: Any, problem: Problem, template: Any, samples: int, max_tokens: int, answer_tokens: int
) -> GatherExample:
    case = case_prompts(problem, template, samples)
    openings = [tokenizer.encode(text) for text in case.openings]
    stops = stop_ids(model, tokenizer)
    # A branch as the tree holds it: prompt and generated tokens, without the end-of-sequence token
    generated = [[t for t in g if t not in stops] for g in greedy(model, tokenizer, openings, max_tokens)]
    solutions = [tokenizer.decode(g, skip_special_tokens=True) for g in generated]
    gather = gather_prompt(case.prefix, solutions, chat_template=template)
    prompt_ids = tokenizer.encode(gather.text)
    answer = greedy(model, tokenizer, [prompt_ids], answer_tokens)[0]
    return GatherExample(
        prompt_ids=prompt_ids,
        packets=[tokenizer.encode(text, add_special_tokens=False) for text in gather.packets],
        branches=[o + g for o, g in zip(openings, generated, strict=True)],
        answer_ids=answer,
    )


def load_examples(path: Path) -> dict[int, GatherExample]:
    """Problem index -> example, from a file `save_example` appended to (missing file: none)."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        index = row.pop("index")
        out[index] = GatherExample(**row)
    return out


def save_example(path: Path, index: int, example: GatherExample) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"index": index, **asdict(example)}) + "\n")
