"""The packet adapter without a server: the soft-token layout (one for the server and the trainer), the file,
the server's placement of the rows among a batch's tokens, the distillation's packet computation against the
full one, the trainer lowering the held-back loss, and the launcher's checks (tiny random models)."""

from __future__ import annotations

import json
from array import array
from types import SimpleNamespace

import pytest
import torch

from sglang_rksc.config import RkscConfig
from sglang_rksc.packets import soft_tokens
from sglang_rksc.packets.adapter import SOFT_TOKENS, AdapterError, PacketAdapter, packaged, wrap
from sglang_rksc.packets.launch_checks import resolve
from sglang_rksc.packets.reuse import _drop_copied_positions
from sglang_rksc.packets.spans import PromptSpan, locate
from sglang_rksc.tools.packets.distill import (
    GatherExample,
    branch_kv,
    kl_per_token,
    plan,
    rope_shift_of,
    student_logprobs,
    teacher_logprobs,
)
from sglang_rksc.tools.packets.train_adapter import Target, evaluate, prepare, train

S = SOFT_TOKENS
VOCAB, HIDDEN = 64, 32


def test_wrap_puts_a_header_before_and_a_trailer_after_each_packet():
    prompt = list(range(100, 130))
    spans = [PromptSpan(3, tuple(prompt[3:13])), PromptSpan(15, tuple(prompt[15:25]))]
    out = wrap(prompt, spans, placeholder=0)
    assert len(out.ids) == len(prompt) + 4 * S
    assert [out.ids[s.start : s.end] for s in out.spans] == [list(s.tokens) for s in spans]
    assert out.spans[0].start == 3 + S and out.spans[1].start == 15 + 3 * S
    assert out.soft_positions == [
        *range(3, 3 + S),
        *range(13 + S, 13 + 2 * S),
        *range(15 + 2 * S, 15 + 3 * S),
        *range(25 + 3 * S, 25 + 4 * S),
    ]
    assert out.soft_rows == [*range(2 * S)] * 2
    assert all(out.ids[p] == 0 for p in out.soft_positions)
    assert [t for i, t in enumerate(out.ids) if i not in set(out.soft_positions)] == prompt
    assert locate(out.ids, [s.tokens for s in spans]) == out.spans  # the server finds them again


def test_the_adapter_file_round_trips_and_a_bad_file_is_refused_in_one_line(tmp_path):
    adapter = PacketAdapter(torch.randn(S, HIDDEN), torch.randn(S, HIDDEN), {"model": "tiny"})
    adapter.save(tmp_path / "a.safetensors")
    back = PacketAdapter.load(tmp_path / "a.safetensors")
    assert torch.equal(back.rows(), adapter.rows()) and back.info["model"] == "tiny" and back.hidden_size == HIDDEN
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    for path, message in ((tmp_path / "junk.safetensors", "is not an adapter"), (tmp_path / "x", "does not exist")):
        with pytest.raises(AdapterError, match=message):
            PacketAdapter.load(path)
    with pytest.raises(AssertionError):
        PacketAdapter(torch.randn(S - 1, HIDDEN), torch.randn(S - 1, HIDDEN))


def _req(prompt: list[int], max_new_tokens: int = 8) -> SimpleNamespace:
    return SimpleNamespace(
        origin_input_ids=array("q", prompt),
        sampling_params=SimpleNamespace(max_new_tokens=max_new_tokens),
        skip_radix_cache_insert=False,
    )


def test_soft_tokens_enter_the_prompt_once_and_stop_its_match_before_the_first():
    prompt = list(range(100, 140))
    packet = tuple(prompt[10:30])
    req = _req(prompt)
    unpadded = req.origin_input_ids
    assert soft_tokens.insert(req, [packet], placeholder=5, context_len=1000)
    assert len(req.origin_input_ids) == 40 + 2 * S and req.skip_radix_cache_insert
    assert unpadded.tolist() == prompt  # the detokeniser's copy is untouched
    assert soft_tokens.match_limit(req) == 10
    assert soft_tokens.match_limit(_req(prompt)) is None
    assert not soft_tokens.insert(_req(prompt, max_new_tokens=950), [packet], 5, 1000)  # would not fit
    assert not soft_tokens.insert(_req(prompt), [tuple(range(900, 920))], 5, 1000)  # packet not in the prompt


def test_the_rows_land_on_the_soft_tokens_before_and_after_copied_positions_leave():
    rows = torch.arange(2 * S, dtype=torch.float32).unsqueeze(1).repeat(1, 4)  # row i holds i
    first, second = _req(list(range(100, 140))), _req(list(range(200, 230)))
    soft_tokens.insert(first, [tuple(range(110, 130))], placeholder=5, context_len=1000)  # soft 10-17, 38-45
    n0 = len(first.origin_input_ids)
    batch = SimpleNamespace(
        reqs=[second, first],
        prefix_lens=[0, 4],
        extend_lens=[30, n0 - 4],
        extend_logprob_start_lens=[30, n0 - 4],
        extend_num_tokens=30 + n0 - 4,
        prefill_input_ids_cpu=torch.tensor([*second.origin_input_ids, *first.origin_input_ids[4:]]),
        out_cache_loc=torch.arange(30 + n0 - 4),
        device="cpu",
        replace_positions=torch.tensor([0]),  # one of SGLang's own overrides, kept
        replace_embeds=torch.full((1, 4), -1.0),
    )
    soft_tokens.place(batch, rows)
    assert batch.prefill_input_ids_cpu[batch.replace_positions[1:]].tolist() == [5] * 2 * S
    assert batch.replace_embeds[1:, 0].tolist() == [*range(2 * S)] and batch.replace_embeds[0, 0] == -1
    _drop_copied_positions(batch, {1: torch.tensor([*range(4, 18), *range(38, n0)])})  # the packet was copied
    assert batch.extend_num_tokens == 30 + n0 - 4 - 20
    assert batch.prefill_input_ids_cpu[batch.replace_positions[1:]].tolist() == [5] * 2 * S
    assert batch.replace_positions[0] == 0


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,  # outputs that depend on the context, so that a moved packet changes them
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


def test_a_packet_copied_from_its_own_context_is_the_full_computation(tiny_llama):
    torch.manual_seed(1)
    prompt = torch.randint(0, VOCAB, (60,)).tolist()
    answer = torch.randint(0, VOCAB, (5,)).tolist()
    shift = rope_shift_of(tiny_llama)
    teacher = teacher_logprobs(tiny_llama, prompt, answer)
    same = GatherExample(prompt, [prompt[10:30], prompt[35:50]], [prompt[:55]], answer)
    layout = plan(same, None)
    assert [(c.start, c.length, c.source) for c in layout.copies] == [(10, 20, 10), (35, 15, 35)]
    kv = {0: branch_kv(tiny_llama, same.branches[0])}
    assert torch.allclose(student_logprobs(tiny_llama, layout, kv, shift, answer, None), teacher, atol=1e-5)
    # the same tokens computed after another context, then moved: no longer the full computation
    other = GatherExample(prompt, [prompt[10:30]], [[1, 2, 3, *prompt[10:30]]], answer)
    layout = plan(other, None)
    assert [(c.start, c.source) for c in layout.copies] == [(10, 3)]
    moved = student_logprobs(tiny_llama, layout, {0: branch_kv(tiny_llama, other.branches[0])}, shift, answer, None)
    assert float(kl_per_token(teacher, moved)) > 1e-6


def test_examples_are_kept_and_read_back_by_problem(tmp_path):
    from sglang_rksc.tools.packets.adapter_data import load_examples, save_example

    path = tmp_path / "examples.jsonl"
    assert load_examples(path) == {}
    first = GatherExample([1, 2, 3], [[2]], [[9, 2]], [4])
    second = GatherExample([5, 6], [[6]], [[6]], [7, 8])
    save_example(path, 12, first)
    save_example(path, 3, second)
    assert load_examples(path) == {12: first, 3: second}


def _examples(model, n: int, seed: int) -> list[GatherExample]:
    """Gather prompts whose packets were computed after a context the gather prompt does not have, with the
    full computation's greedy answers."""
    g = torch.Generator().manual_seed(seed)
    question, instruction = list(range(1, 9)), list(range(50, 56))
    out = []
    for _ in range(n):
        packets = [torch.randint(10, 40, (12,), generator=g).tolist() for _ in range(2)]
        prompt = [*question, *packets[0], 60, *packets[1], *instruction]
        branches = [[*question, 61, 62, 63, *p] for p in packets]
        with torch.no_grad():
            answer = model.generate(torch.tensor([prompt]), max_new_tokens=4, do_sample=False)[0, len(prompt) :]
        out.append(GatherExample(prompt, packets, branches, answer.tolist()))
    return out


def test_the_trainer_lowers_the_distillation_loss_on_held_back_prompts(tiny_llama):
    shift = rope_shift_of(tiny_llama)
    fit = [prepare(tiny_llama, e, placeholder=0) for e in _examples(tiny_llama, 48, seed=2)]
    held: list[Target] = [prepare(tiny_llama, e, placeholder=0) for e in _examples(tiny_llama, 8, seed=3)]
    assert all(len(t.wrapped.copies) == 2 for t in held)
    init = tiny_llama.get_input_embeddings().weight[40 : 40 + 2 * S].clone()  # as the trainer: real embeddings
    before = evaluate(tiny_llama, shift, held, init)["kl"]
    plain = evaluate(tiny_llama, shift, held, None)["kl"]
    rows, losses = train(tiny_llama, shift, fit, init, epochs=3, lr=0.003, log=lambda _: None)
    after = evaluate(tiny_llama, shift, held, rows)["kl"]
    assert after < 0.5 * before, (before, after)
    assert after < plain, (plain, after)  # on this model the trained soft tokens beat plain reuse
    assert losses[-1] < losses[0]


def test_the_launcher_resolves_the_adapter_and_refuses_a_wrong_one(tmp_path):
    llama = tmp_path / "SmolLM2-135M-Instruct-bf16"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 576}))
    on = RkscConfig(packets=True)
    shipped = packaged("smollm2-135m")
    expected = str(shipped.resolve()) if shipped.is_file() else "none"
    assert resolve(on, str(llama), []).packet_adapter == expected
    assert resolve(RkscConfig(packets=True, packet_adapter="none"), str(llama), []).packet_adapter == "none"
    wrong = tmp_path / "wrong.safetensors"
    PacketAdapter(torch.zeros(S, 64), torch.zeros(S, 64)).save(wrong)
    with pytest.raises(ValueError, match="hidden size is 576"):
        resolve(RkscConfig(packets=True, packet_adapter=str(wrong)), str(llama), [])
    with pytest.raises(ValueError, match="does not exist"):
        resolve(RkscConfig(packets=True, packet_adapter=str(tmp_path / "missing")), str(llama), [])


def test_a_request_whose_soft_tokens_fail_runs_without_them_and_the_failure_is_counted():
    from sglang_rksc.packets.reuse import PACKETS_ATTR, PacketReuse

    reuse = PacketReuse(cache=None, shift=None, adapter=PacketAdapter(torch.zeros(S, 4), torch.zeros(S, 4)))
    prompt = list(range(100, 140))
    req = _req(prompt)
    req.return_logprob, req.input_embeds, req.positional_embed_overrides = False, None, None
    setattr(req, PACKETS_ATTR, [tuple(prompt[10:30])])
    del req.sampling_params.max_new_tokens  # a request the insertion cannot read
    req.sampling_params.custom_params = None
    reuse.wrap_request(req, placeholder=5, context_len=1000)
    assert reuse.stats.failures == 1 and reuse.stats.soft_tokens == 0
    assert req.origin_input_ids.tolist() == prompt and soft_tokens.match_limit(req) is None
    assert not req.skip_radix_cache_insert
    req.sampling_params.max_new_tokens = 8  # readable again: wrapped
    reuse.wrap_request(req, placeholder=5, context_len=1000)
    assert reuse.stats.soft_tokens == 2 * S and len(req.origin_input_ids) == 40 + 2 * S


def test_every_shipped_adapter_is_a_named_models_and_fits_it():
    from sglang_rksc.packets.adapter import ADAPTER_DIR
    from sglang_rksc.runtime.models import MODELS, model_dir

    files = sorted(ADAPTER_DIR.glob("*.safetensors"))
    assert {f.stem for f in files} >= {"smollm2-135m", "qwen2.5-coder-1.5b"}
    for file in files:
        adapter = PacketAdapter.load(file)
        assert file.stem in MODELS and adapter.info["model"] == file.stem
        assert json.loads(adapter.info["figures"])["held_out"]["adapter"]["kl"] > 0
        config = model_dir(file.stem) / "config.json"
        if config.is_file():  # the quality model is installed only on request
            assert adapter.hidden_size == json.loads(config.read_text())["hidden_size"]
