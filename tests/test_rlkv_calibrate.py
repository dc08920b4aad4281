"""RLKV head calibration: the sink+window reference, the probe inside transformers, the ranking, the cut."""

from __future__ import annotations

import pytest
import torch

from sglang_rksc.kernels.sink_window import head_split_attention, sink_window_keep
from sglang_rksc.rlkv.head_mask import HeadMaskError, HeadScores
from sglang_rksc.tools.rlkv import calibrate


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    calibrate.register_attention()
    config._attn_implementation = calibrate.ATTENTION_NAME
    return LlamaForCausalLM(config).eval()


def test_keep_mask_is_causal_sinks_and_window():
    keep = sink_window_keep(torch.arange(8), torch.arange(8), sink=2, window=3)
    for q in range(8):
        for k in range(8):
            assert bool(keep[q, k]) == (k <= q and (k < 2 or q - k < 3)), (q, k)


def test_window_covering_the_sequence_is_plain_causal_gqa():
    torch.manual_seed(1)
    q, k, v = torch.randn(6, 10, 8), torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    pos = torch.arange(10)
    every_head = torch.ones(2, dtype=torch.bool)
    out = head_split_attention(q, k, v, pos, pos, every_head, sink=0, window=10, scaling=8**-0.5)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q[None], k.repeat_interleave(3, 0)[None], v.repeat_interleave(3, 0)[None], is_causal=True
    )[0]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    short = head_split_attention(q, k, v, pos, pos, every_head, sink=1, window=2, scaling=8**-0.5)
    assert not torch.allclose(short[:, 5:], expected[:, 5:])  # the window really cuts
    torch.testing.assert_close(short[:, :3], expected[:, :3])  # ...but not where sinks+window cover all


def test_probe_without_compressed_heads_is_the_model():
    model = _tiny_llama()
    ids = torch.randint(0, 96, (1, 20))
    calibrate.set_compressed(model, {}, 2, 4)
    with torch.no_grad():
        probed = model(ids).logits
        model.config._attn_implementation = "sdpa"
        for layer in model.model.layers:
            layer.self_attn.config._attn_implementation = "sdpa"
        reference = model(ids).logits
    torch.testing.assert_close(probed, reference, rtol=1e-4, atol=1e-4)


def test_a_head_made_irrelevant_is_ranked_first_to_compress():
    model = _tiny_llama(seed=3)
    head_dim = 64 // 4
    with torch.no_grad():  # KV head 1 of layer 1 feeds query heads 2 and 3: their output projection is zeroed
        model.model.layers[1].self_attn.o_proj.weight[:, 2 * head_dim : 4 * head_dim] = 0.0
    generator = torch.Generator().manual_seed(5)
    traces = [calibrate.Trace(torch.randint(0, 96, (40,), generator=generator), 10) for _ in range(2)]
    scores = calibrate.head_scores(model, traces, sink=2, window=4)
    assert abs(scores[1][1]) < 1e-6
    others = [scores[layer][head] for layer in range(3) for head in range(2) if (layer, head) != (1, 1)]
    assert min(others) > 1e-5
    ranked = HeadScores("tiny", 3, 2, 2, 4, scores)
    assert ranked.ranking()[0] == (1, 1)
    assert ranked.compressed_heads(1 / 6)[1] == [False, True]


def test_cut_at_a_sparsity_and_round_trip(tmp_path):
    scores = [[0.5, 0.1, 0.9], [0.2, 0.05, 0.7]]
    ranked = HeadScores("m", 2, 3, 16, 64, scores, command="cmd")
    assert sum(map(sum, ranked.compressed_heads(0.0))) == 0
    mask = ranked.compressed_heads(0.5)  # 3 of 6: the three lowest scores
    assert mask == [[False, True, False], [True, True, False]]
    ranked.save(tmp_path / "m.json")
    assert HeadScores.load(tmp_path / "m.json") == ranked
    with pytest.raises(HeadMaskError, match="sparsity"):
        ranked.compressed_heads(1.0)
    with pytest.raises(HeadMaskError, match="2 layers x 3"):
        HeadScores("m", 2, 3, 16, 64, [[0.1, 0.2]])
    with pytest.raises(HeadMaskError, match="does not exist"):
        HeadScores.load(tmp_path / "missing.json")


def test_a_whole_mask_is_scored_and_the_calibrated_one_beats_the_worst():
    from sglang_rksc.tools.rlkv import mask_eval

    model = _tiny_llama(seed=3)
    head_dim = 64 // 4
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[:, 2 * head_dim : 4 * head_dim] = 0.0
    generator = torch.Generator().manual_seed(5)
    traces = [calibrate.Trace(torch.randint(0, 96, (40,), generator=generator), 10) for _ in range(2)]
    with torch.no_grad():
        runners = [calibrate.Runner(model, trace) for trace in traces]
    irrelevant = [[False, False], [False, True], [False, False]]
    kl, same = mask_eval.divergence(model, runners, irrelevant, 2, 4)
    assert abs(kl) < 1e-6 and same == 1.0
    assert mask_eval.divergence(model, runners, [[True, True], [False, False], [False, False]], 2, 4)[0] > 1e-5
    random_mask = mask_eval.random_mask(3, 2, 4, seed=1)
    assert sum(map(sum, random_mask)) == 4
    scores = HeadScores("tiny", 3, 2, 2, 4, calibrate.head_scores(model, traces, sink=2, window=4))
    figures = {f.mask: f for f in mask_eval.evaluate(model, runners, scores, [0.5], random_masks=2)}
    assert set(figures) == {"calibrated", "highest-scored", "random-0", "random-1"}
    assert all(f.heads == 3 for f in figures.values())
    assert figures["calibrated"].kl_per_token < figures["highest-scored"].kl_per_token


def test_server_traces_are_the_chat_prompt_then_the_servers_greedy_answer(rksc_server, default_model_dir):
    # The quality model's traces come from the server (`--traces-via-server`): the same prompt tokens as the
    # transformers path, then tokens the float32 model also ranks first (bf16 rounding aside).
    model, tokenizer = calibrate.load_model(default_model_dir)
    prompts = ["What is 17 + 25? Answer briefly.", "Name three primary colours."]
    traces = calibrate.server_traces(rksc_server.url, tokenizer, prompts, max_new_tokens=6)
    assert len(traces) == len(prompts)
    for prompt, trace in zip(prompts, traces, strict=True):
        prompt_ids = calibrate.chat_ids(tokenizer, prompt)[0]
        assert trace.prompt_len == prompt_ids.shape[0]
        assert torch.equal(trace.ids[: trace.prompt_len], prompt_ids)
        assert 1 <= trace.ids.shape[0] - trace.prompt_len <= 6
        with torch.no_grad():
            logits = model(trace.ids[None]).logits[0, trace.prompt_len - 1 : -1]
        chosen = logits.gather(1, trace.ids[trace.prompt_len :, None])[:, 0]
        assert bool((logits.max(-1).values - chosen < 0.5).all()), "the server's tokens are the greedy ones"
