"""Rank a model's KV heads by what compressing each one alone costs, on the model's own reasoning.

For every KV head (layer, h): the traces are run again with that head seeing only its sinks and recent
window (`sink_window`), and the score is the mean KL divergence of the next-token distributions from the
full model's, over the traces' generated tokens. Layers below the probed one are unchanged, so each probe
starts from the full run's hidden state at that layer. The traces are the model's own greedy answers to
the self-consistency program's prompt on the calibration slice (GSM8K 0-299). Runs with transformers on
the CPU, in float32:

    python -m sglang_rksc.rlkv.calibrate --model smollm2-135m --start 0 --num-problems 16 \
        --output sglang_rksc/rlkv/masks/smollm2-135m.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sglang_rksc.rlkv.head_mask import HeadScores
from sglang_rksc.rlkv.sink_window import head_split_attention

ATTENTION_NAME = "rksc_head_probe"
DESCRIPTION = "Score each KV head by the KL divergence its sink+window compression causes on reasoning traces."


def _probe_attention(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """transformers attention function: full causal attention, except for the module's compressed heads.

    The additive mask transformers passes is not used: one unpadded sequence per call, positions
    0..k_len-1 (a cached decode step's queries are the last q_len of them).
    """
    del attention_mask, dropout, kwargs
    compressed_heads, sink, window = getattr(module, "rksc_probe", ((), 1, 1))
    kv_heads, k_len = key.shape[1], key.shape[2]
    q_len = query.shape[2]
    flags = torch.zeros(kv_heads, dtype=torch.bool)
    flags[list(compressed_heads)] = True
    k_pos = torch.arange(k_len)
    q_pos = k_pos[k_len - q_len :]
    out = torch.stack(
        [
            head_split_attention(query[b], key[b], value[b], q_pos, k_pos, flags, sink, window, scaling)
            for b in range(query.shape[0])
        ]
    )
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _probe_attention)


def load_model(path: str | Path):
    """(model, tokenizer) in float32 on the CPU, with the probing attention function."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    register_attention()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation=ATTENTION_NAME)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def set_compressed(model, layer_heads: dict[int, Sequence[int]], sink: int, window: int) -> None:
    """Which KV heads of which layers run sink+window attention in the following forwards."""
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.rksc_probe = (tuple(layer_heads.get(index, ())), sink, window)


@dataclass(frozen=True)
class Trace:
    ids: torch.Tensor  # [length] prompt and generated tokens
    prompt_len: int


def generate_traces(model, tokenizer, prompts: Iterable[str], max_new_tokens: int) -> list[Trace]:
    """The model's own greedy answers, each after its chat-formatted prompt."""
    set_compressed(model, {}, 1, 1)
    traces = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        traces.append(Trace(out[0], ids.shape[1]))
    return traces


class Runner:
    """One trace's full run, kept so that a probe can restart at any layer."""

    def __init__(self, model, trace: Trace):
        self.model = model
        self.layers = model.model.layers
        ids = trace.ids[None]
        self.position_ids = torch.arange(ids.shape[1])[None]
        embeds = model.model.embed_tokens(ids)
        self.position_embeddings = model.model.rotary_emb(embeds, position_ids=self.position_ids)
        # Logits at position t predict token t+1: the generated tokens' predictions.
        self.measured = slice(trace.prompt_len - 1, ids.shape[1] - 1)
        self.layer_inputs: list[torch.Tensor] = []
        self.full_logprobs = self._logprobs(self._run(embeds, 0, record=True))

    def _run(self, hidden: torch.Tensor, first_layer: int, record: bool = False) -> torch.Tensor:
        for layer in self.layers[first_layer:]:
            if record:
                self.layer_inputs.append(hidden)
            hidden = layer(
                hidden,
                attention_mask=None,
                position_ids=self.position_ids,
                position_embeddings=self.position_embeddings,
            )
        return hidden

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(self.model.model.norm(hidden[:, self.measured]))
        return torch.log_softmax(logits.float(), dim=-1)[0]

    def kl_from_full(self, first_layer: int) -> torch.Tensor:
        """Per measured token, KL(full || this run), the compressed heads set beforehand; layers below
        `first_layer` must be unchanged."""
        return self.divergence(first_layer)[0]

    def divergence(self, first_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per measured token: KL(full || this run), and whether the greedy choice is the full run's."""
        logprobs = self._logprobs(self._run(self.layer_inputs[first_layer], first_layer))
        kl = (self.full_logprobs.exp() * (self.full_logprobs - logprobs)).sum(-1)
        return kl, logprobs.argmax(-1) == self.full_logprobs.argmax(-1)


def head_scores(model, traces: Sequence[Trace], sink: int, window: int, progress: bool = False) -> list[list[float]]:
    """scores[layer][kv_head]: mean KL over every measured token of every trace, that head alone compressed."""
    num_layers = len(model.model.layers)
    kv_heads = model.config.num_key_value_heads
    totals = [[0.0] * kv_heads for _ in range(num_layers)]
    tokens = 0
    with torch.no_grad():
        for n, trace in enumerate(traces):
            set_compressed(model, {}, sink, window)
            runner = Runner(model, trace)
            tokens += runner.full_logprobs.shape[0]
            for layer in range(num_layers):
                for head in range(kv_heads):
                    set_compressed(model, {layer: [head]}, sink, window)
                    totals[layer][head] += float(runner.kl_from_full(layer).sum())
            if progress:
                print(f"trace {n + 1}/{len(traces)}: {runner.full_logprobs.shape[0]} tokens", file=sys.stderr)
    set_compressed(model, {}, sink, window)
    return [[total / max(tokens, 1) for total in row] for row in totals]


def model_and_traces(model_name: str, start: int, num_problems: int, max_new_tokens: int) -> tuple[object, list[Trace]]:
    """The model (a named one or a folder) and its greedy answers to the self-consistency prompt on GSM8K
    problems start .. start + num_problems - 1."""
    from sglang_rksc.programs import gsm8k
    from sglang_rksc.programs.self_consistency_verify import SOLVE_PROMPT
    from sglang_rksc.runtime import models

    folder = models.prepare(model_name) if model_name in models.MODELS else Path(model_name)
    model, tokenizer = load_model(folder)
    problems = gsm8k.load_problems(start, num_problems)
    began = time.monotonic()
    traces = generate_traces(
        model, tokenizer, (SOLVE_PROMPT.format(question=p.question) for p in problems), max_new_tokens
    )
    print(f"{len(traces)} traces in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return model, traces


def main(argv: list[str] | None = None) -> int:
    from sglang_rksc.runtime import models

    parser = argparse.ArgumentParser(prog="python -m sglang_rksc.rlkv.calibrate", description=DESCRIPTION)
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="a named model or a model folder")
    parser.add_argument("--start", type=int, default=0, help="first GSM8K problem (calibration slice: 0-299)")
    parser.add_argument("--num-problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=160, help="tokens generated per trace")
    parser.add_argument("--sink", type=int, default=16, help="sink tokens a compressed head keeps")
    parser.add_argument("--window", type=int, default=64, help="recent tokens a compressed head keeps")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.start + args.num_problems > 300:
        parser.error("calibrate on the calibration slice: problems 0-299")
    began = time.monotonic()
    model, traces = model_and_traces(args.model, args.start, args.num_problems, args.max_new_tokens)
    scores = head_scores(model, traces, args.sink, args.window, progress=True)
    result = HeadScores(
        model=args.model,
        num_layers=len(scores),
        num_kv_heads=len(scores[0]),
        sink=args.sink,
        window=args.window,
        scores=scores,
        command="python -m sglang_rksc.rlkv.calibrate " + shlex.join(argv if argv is not None else sys.argv[1:]),
        traces=f"GSM8K {args.start}-{args.start + args.num_problems - 1}, self_consistency_verify's prompt, "
        f"greedy, {args.max_new_tokens} tokens; {sum(t.ids.shape[0] - t.prompt_len for t in traces)} tokens scored",
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result.save(args.output)
    print(f"wrote {args.output} in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
