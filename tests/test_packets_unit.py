"""Packets without a server: keys turned by RoPE against SGLang's own rotary embedding, prefill attention with
copied positions against the stock torch-native computation, where a packet is found (prompt, tree, namespace),
the batch's shrinking, request validation and the launcher's checks."""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import pytest
import torch

from sglang_rksc.cache.radix_cache import RkscRadixCache
from sglang_rksc.config import HeadCompressionSettings, RkscConfig, SemanticSettings
from sglang_rksc.packets.attention import extend_with_copied_positions
from sglang_rksc.packets.launch_checks import gpu_backend_flags
from sglang_rksc.packets.launch_checks import resolve as check_launch
from sglang_rksc.packets.reuse import _drop_copied_positions
from sglang_rksc.packets.rope_shift import RopeShift
from sglang_rksc.packets.spans import find_cached, find_run, locate
from sglang_rksc.wire import check_custom_params, with_options

HEAD_DIM, KV_HEADS, Q_HEADS = 16, 2, 4


def _sglang_rope(neox: bool, base: float = 10000.0) -> object:
    """SGLang's rotary embedding module, without the device kernels its constructor looks for: RopeShift reads
    only its attributes and its own float32 cos/sin computation."""
    from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding

    rope = RotaryEmbedding.__new__(RotaryEmbedding)
    torch.nn.Module.__init__(rope)
    rope._force_native = False
    rope.head_size = rope.rotary_dim = HEAD_DIM
    rope.max_position_embeddings, rope.base, rope.is_neox_style, rope.position_start = 512, base, neox, 0
    return rope


def test_turned_keys_equal_keys_computed_at_the_new_positions():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    shift = RopeShift.of_module(_sglang_rope(neox=True))
    config = LlamaConfig(hidden_size=HEAD_DIM * Q_HEADS, num_attention_heads=Q_HEADS, rope_theta=10000.0)
    direct_rope = LlamaRotaryEmbedding(config)
    torch.manual_seed(0)
    raw = torch.randn(1, KV_HEADS, 20, HEAD_DIM)  # transformers' layout: batch, heads, tokens, dim

    def rotated(positions: torch.Tensor) -> torch.Tensor:
        cos, sin = direct_rope(raw, positions.unsqueeze(0))
        _, k = apply_rotary_pos_emb(raw, raw, cos, sin)
        return k[0].transpose(0, 1)  # tokens, heads, dim

    cached_at = torch.arange(100, 120)  # where the span was computed
    cached = rotated(cached_at)
    for new_start in (7, 100, 301):  # earlier, same, later
        new_at = torch.arange(new_start, new_start + 20)
        assert torch.allclose(shift.shift(cached, new_at - cached_at), rotated(new_at), atol=1e-4)
    # bf16 keys come back in bf16, within bf16 rounding of the direct computation
    turned = shift.shift(cached.bfloat16(), new_at - cached_at)
    assert turned.dtype == torch.bfloat16
    assert torch.allclose(turned.float(), rotated(new_at), atol=0.05)


def test_interleaved_rope_turns_compose_and_undo():
    shift = RopeShift.of_module(_sglang_rope(neox=False))
    keys = torch.randn(6, KV_HEADS, HEAD_DIM)
    d = torch.tensor([3, -5, 40, 0, 7, 100])
    assert torch.allclose(shift.shift(shift.shift(keys, d), -d), keys, atol=1e-5)
    assert torch.allclose(shift.shift(shift.shift(keys, d), d), shift.shift(keys, 2 * d), atol=1e-4)
    assert not torch.allclose(shift.shift(keys, d), keys)


def test_a_rope_that_scales_its_cos_and_sin_is_refused():
    cache = torch.cat([torch.ones(8, 4) * 2, torch.zeros(8, 4)], dim=-1)
    with pytest.raises(ValueError, match="YaRN"):
        RopeShift(cache, 8, 8, True)


def _cache(seq_lens: list[int], slots: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    k = torch.randn(slots, KV_HEADS, HEAD_DIM)
    v = torch.randn(slots, KV_HEADS, HEAD_DIM)
    req_to_token = torch.zeros(len(seq_lens), 32, dtype=torch.int64)
    start = 1
    for row, n in enumerate(seq_lens):
        req_to_token[row, :n] = torch.arange(start, start + n)
        start += n
    return k, v, req_to_token


def test_without_copied_positions_the_attention_is_the_stock_torch_native_one(sglang_context):
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    seq_lens, prefix_lens = [10, 7], [4, 0]
    extend = [s - p for s, p in zip(seq_lens, prefix_lens, strict=True)]
    k, v, req_to_token = _cache(seq_lens)
    q = torch.randn(sum(extend), Q_HEADS, HEAD_DIM)
    ours = extend_with_copied_positions(
        q, k, v, req_to_token, torch.arange(2), torch.tensor(seq_lens), extend, [None, None], None
    )
    stock = torch.empty_like(q)
    TorchNativeAttnBackend._run_sdpa_forward_extend(
        None,
        q,
        stock,
        k,
        v,
        req_to_token,
        torch.arange(2),
        torch.tensor(seq_lens),
        torch.tensor(prefix_lens),
        torch.tensor(extend),
        scaling=None,
        enable_gqa=True,
        causal=True,
    )
    assert torch.allclose(ours, stock, atol=1e-5)


def test_computed_positions_see_the_copied_ones_as_if_they_had_been_computed():
    # One request, prefix 3, sequence 12: positions 5-8 were copied in; every position's KV is in the cache.
    k, v, req_to_token = _cache([12])
    q_all = torch.randn(9, Q_HEADS, HEAD_DIM)  # queries of positions 3..11
    full = extend_with_copied_positions(
        q_all, k, v, req_to_token, torch.arange(1), torch.tensor([12]), [9], [None], None
    )
    kept = torch.tensor([3, 4, 9, 10, 11])
    part = extend_with_copied_positions(
        q_all[kept - 3], k, v, req_to_token, torch.arange(1), torch.tensor([12]), [5], [kept], None
    )
    assert torch.allclose(part, full[kept - 3], atol=1e-5)


def test_packets_are_located_in_the_prompt_in_order_and_by_their_inner_tokens():
    prompt = list(range(100, 160))
    first, second = prompt[5:17], prompt[30:45]
    spans = locate(prompt, [first, second, [1, 2, 3]])  # the last is not in the prompt
    assert [(s.start, s.end) for s in spans] == [(5, 17), (30, 45)]
    # tokenised alone, a packet may start and end with tokens the prompt merged otherwise
    spans = locate(prompt, [[7, *prompt[10:22], 8]])
    assert [(s.start, s.end) for s in spans] == [(10, 22)]
    assert locate(prompt, [prompt[0:4]]) == []  # too short to be worth a copy
    assert find_run([1, 2, 3, 2, 3], [2, 3], 2) == 3


def _insert(cache: RkscRadixCache, tokens: list[int], slots: list[int], extra_key: str | None = None) -> None:
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    key = RadixKey(array("q", tokens), extra_key=extra_key)
    cache.insert(InsertParams(key=key, value=torch.tensor(slots, dtype=torch.int64)))


def test_a_cached_run_is_found_with_its_slots_and_position_in_its_own_namespace_only():
    cache = RkscRadixCache.create_simulated()
    question = list(range(1, 21))
    branch_a, branch_b = list(range(200, 230)), list(range(300, 330))
    _insert(cache, question + branch_a, list(range(1000, 1050)))
    _insert(cache, question + branch_b, list(range(1000, 1020)) + list(range(2000, 2030)))
    _insert(cache, question + list(range(400, 430)), list(range(3000, 3050)), extra_key="tenant-2")
    found = find_cached(cache, branch_b[3:20], (None, None))
    assert found.position == 23
    assert found.slots.tolist() == list(range(2003, 2020))
    across = find_cached(cache, question[10:] + branch_a[:10], (None, None))  # spans a node boundary
    assert across.position == 10 and across.slots.tolist() == list(range(1010, 1030))
    assert find_cached(cache, list(range(400, 420)), (None, None)) is None  # another tenant's
    assert find_cached(cache, list(range(400, 420)), ("tenant-2", None)).slots.tolist() == list(range(3020, 3040))
    assert find_cached(cache, branch_a[5:15], ("tenant-2", None)) is None


def test_copied_positions_leave_the_batch_tokens_slots_and_lengths():
    batch = SimpleNamespace(
        reqs=[object(), object()],
        prefix_lens=[2, 0],
        extend_lens=[6, 3],
        extend_logprob_start_lens=[6, 3],
        extend_num_tokens=9,
        prefill_input_ids_cpu=torch.arange(10, 19),
        out_cache_loc=torch.arange(50, 59),
        replace_positions=None,
    )
    _drop_copied_positions(batch, {0: torch.tensor([2, 6, 7])})  # positions 3-5 copied
    assert batch.extend_lens == [3, 3] and batch.extend_num_tokens == 6
    assert batch.prefill_input_ids_cpu.tolist() == [10, 14, 15, 16, 17, 18]
    assert batch.out_cache_loc.tolist() == [50, 54, 55, 56, 57, 58]
    assert batch.extend_logprob_start_lens == [3, 3]


@pytest.mark.parametrize(
    "packets, message",
    [("text", "list of at most"), ([""], "non-empty"), ([3], "non-empty"), (["x"] * 65, "list of at most")],
)
def test_malformed_packets_are_refused_by_name(packets, message):
    with pytest.raises(ValueError, match=message):
        check_custom_params(with_options({"packets": packets}))
    check_custom_params(with_options({"packets": ["a solution"]}))


def test_the_launcher_refuses_what_packets_do_not_support(tmp_path):
    import json

    def folder(architecture: str) -> str:
        path = tmp_path / architecture
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
        return str(path)

    llama = folder("LlamaForCausalLM")
    on = RkscConfig(packets=True)
    check_launch(on, llama, ["--attention-backend", "torch_native"])
    check_launch(on, llama, ["--attention-backend", "triton"])  # a GPU's (the CPU launcher refuses it itself)
    check_launch(RkscConfig(), "/nowhere", ["--attention-backend", "fa3"])  # off: nothing to check
    for argv, message in (
        (["--attention-backend", "fa3"], "torch_native or triton"),
        (["--prefill-attention-backend", "flashinfer"], "prefill-attention-backend"),
        (["--page-size", "16"], "page-size"),
        (["--enable-mixed-chunk"], "mixed-chunk"),
        (["--enable-piecewise-cuda-graph"], "piecewise"),
        (["--kv-cache-dtype", "fp8_e4m3"], "kv-cache-dtype"),
    ):
        with pytest.raises(ValueError, match=message):
            check_launch(on, llama, argv)
    # packets compose with head compression and with ASKS
    check_launch(RkscConfig(packets=True, heads=HeadCompressionSettings(sparsity=0.4)), llama, [])
    check_launch(RkscConfig(packets=True, semantic=SemanticSettings(on=True)), llama, [])
    with pytest.raises(ValueError, match="this model is GPT2LMHeadModel"):
        check_launch(on, folder("GPT2LMHeadModel"), [])
    with pytest.raises(ValueError, match="local model folder"):
        check_launch(on, "/nowhere", [])
    # on a GPU with no backend named, packets get the Triton backend (SGLang would pick one they do not extend)
    assert gpu_backend_flags(on, []) == ["--attention-backend", "triton"]
    assert gpu_backend_flags(on, ["--attention-backend", "torch_native"]) == []
    assert gpu_backend_flags(RkscConfig(), []) == []
    with_heads = RkscConfig(packets=True, heads=HeadCompressionSettings(sparsity=0.4))
    assert gpu_backend_flags(with_heads, []) == ["--attention-backend", "torch_native"]  # head-split attention


def test_the_gather_prompt_lists_each_branch_unchanged_and_marks_it():
    from sglang_rksc.lang.gather import gather_prompt

    template = SimpleNamespace(
        get_prefix_and_suffix=lambda role, hist: {"user": ("<u>", "</u>"), "assistant": ("<a>", "</a>")}[role]
    )
    prompt = gather_prompt("<q>question</q>", ["first answer 3", "  ", "second answer 4"], chat_template=template)
    assert prompt.text.startswith("<q>question</q><u>Here are 3 candidate solutions")
    assert "Solution 1:\nfirst answer 3\n\nSolution 2:\n  \n\nSolution 3:\nsecond answer 4\n" in prompt.text
    assert prompt.text.endswith("</u><a>")
    assert prompt.packets == ["first answer 3", "second answer 4"]  # a blank branch is not a packet
    with pytest.raises(ValueError, match="no branches"):
        gather_prompt("q", [])


def test_the_gather_summary_compares_reuse_with_the_full_computation():
    from sglang_rksc.programs import aggregate

    def record(prediction, not_computed, full=None):
        r = {
            "prediction": prediction,
            "prompt_tokens": 100,
            "cached_tokens": 20,
            "completion_tokens": 5,
            "tokens_not_computed": not_computed,
            "spans_reused": 2 if not_computed else 0,
            "seconds": 1.0,
        }
        if full is not None:
            r["full"] = full
        return r

    rows = [
        {"gold": 8, **aggregate.score(record(8, 60, record(8, 0)), 8)},
        {"gold": 5, **aggregate.score(record(4, 50, record(5, 0)), 5)},
    ]
    summary = aggregate.summarize(rows)
    assert summary["usc_accuracy"] == 0.5 and summary["usc_full_accuracy"] == 1.0
    assert summary["usc_agreement_with_full"] == 0.5
    assert summary["gather_prompt_tokens_computed"] == 160 - 110 and summary["gather_tokens_not_computed"] == 110
    assert summary["gather_full_prompt_tokens_computed"] == 160
    assert aggregate.summarize([{"gold": 1}]) == {}


def test_the_packet_benchmark_compares_the_modes_on_the_same_problems():
    from sglang_rksc.bench.packets import summarize

    def mode(computed, ttft, prediction, text=None):
        return {
            "prompt_tokens": 500,
            "computed": computed,
            "ttft_s": ttft,
            "prediction": prediction,
            "text": text or f"The answer is {prediction}.",
        }

    rows = [
        {"gold": 8, "adapter": mode(66, 1.0, 8), "plain": mode(50, 1.0, 8, "so 8"), "full": mode(400, 4.0, 8)},
        {"gold": 3, "adapter": mode(86, 2.0, 3), "plain": mode(70, 2.0, 5), "full": mode(420, 6.0, 3)},
        {"gold": 4, "adapter": mode(86, 2.0, 6), "plain": mode(70, 2.0, 6), "full": mode(420, 6.0, 4)},
    ]
    summary = summarize(rows)
    assert summary["plain"]["computed_ratio"] == 1240 / 190 and summary["adapter"]["computed_ratio"] == 1240 / 238
    assert summary["plain"]["ttft_ratio"] == 16.0 / 5.0
    assert summary["plain"]["answer_agreement"] == 1 / 3 and summary["adapter"]["answer_agreement"] == 2 / 3
    assert summary["recovery_answer_agreement"] == pytest.approx(0.5)
    assert summary["plain"]["same_text"] == 0 and summary["adapter"]["same_text"] == 2 / 3
    assert summary["recovery_same_text"] == pytest.approx(2 / 3)
    assert (summary["adapter"]["accuracy"], summary["full"]["accuracy"]) == (2 / 3, 1.0)
    assert summary["full"]["ttft_median_s"] == 6.0
    from sglang_rksc.runtime.cost_model import load

    gpu, model = summary["gpu"], load()  # costed with the shipped GPU table
    assert gpu["full_prefill_ms_per_gather"] == pytest.approx(model.prefill_ms(1240 / 3))
    assert gpu["adapter_prefill_ms_per_gather"] == pytest.approx(model.prefill_ms(238 / 3))
    assert gpu["decode_step_ms"] == model.step_ms(1)


def test_a_request_counts_each_packet_once_across_chunks_and_a_retraction():
    from sglang_rksc.packets.reuse import PacketReuse, _KvCopy
    from sglang_rksc.packets.spans import CachedSpan, PromptSpan

    slots = torch.arange(1, 101).view(1, 100)
    cache = SimpleNamespace(req_to_token_pool=SimpleNamespace(req_to_token=slots))
    reuse = PacketReuse(cache, shift=None)  # plans only: no KV pool here
    cached = {tuple(range(20, 30)): CachedSpan(5, torch.arange(10))}  # the second packet is not cached
    reuse._find = lambda span, space: (span, cached.get(span.tokens))
    req = SimpleNamespace(extra_key=None, cache_salt=None, kv=SimpleNamespace(req_pool_idx=0), customized_info=None)
    spans = [PromptSpan(20, tuple(range(20, 30))), PromptSpan(50, tuple(range(50, 60)))]

    def entry():
        return req.customized_info["rksc_packets"][0]

    found = []
    reuse._plan_packets(req, spans, 0, 40, found)  # first chunk: the cached packet
    copy = _KvCopy.of(found)  # into the request's own slots of positions 20-29, turned by 20 - 5 positions
    assert copy.source.tolist() == list(range(10)) and copy.target.tolist() == list(range(21, 31))
    assert copy.delta.tolist() == [15] * 10
    reuse._plan_packets(req, spans, 40, 70, found)  # second chunk: the missed one
    assert len(found) == 1
    assert (len(entry()["reused"]), entry()["missed"], entry()["tokens_not_computed"]) == (1, 1, 10)
    reuse._plan_packets(req, spans, 0, 70, found)  # retracted, then computed again in one round
    assert (len(entry()["reused"]), entry()["missed"], entry()["tokens_not_computed"]) == (1, 1, 10)
    assert entry()["reused"] == [{"start": 20, "end": 30, "from": 5}]
