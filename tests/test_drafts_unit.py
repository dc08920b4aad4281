"""Drafts without a server: the draft store, the draft length, chain verification, the settings."""

from __future__ import annotations

import math

import pytest
import torch

from sglang_rksc import config
from sglang_rksc.drafts.length import Acceptance, DraftLength, expected_tokens
from sglang_rksc.drafts.store import DraftStore
from sglang_rksc.kernels.chain_verify import sampling_probs, verify_greedy, verify_sampled
from sglang_rksc.runtime import cost_model

# ---------------------------------------------------------------- the store

A, B = ("", "tenant-a"), ("", "tenant-b")


def test_a_request_drafts_from_its_own_earlier_tokens():
    store = DraftStore(1000)
    store.update(A, "r", [5, 6, 7, 8, 9, 1, 2, 5, 6])
    draft = store.propose(A, "r", 3)
    assert draft.tokens == (7, 8, 9) and draft.source == "self" and draft.match == 2


def test_a_sibling_sharing_the_prefix_is_a_branch_and_another_program_is_other():
    prefix = list(range(100, 140))
    store = DraftStore(1000)
    store.update(A, "sibling", [*prefix, 1, 2, 3, 4, 5])
    store.update(A, "stranger", [7, 7, 1, 2, 9, 9])
    store.update(A, "r", [*prefix, 8, 1, 2])
    assert store.propose(A, "r", 2).tokens == (3, 4)
    assert store.propose(A, "r", 2).source == "branch"
    store.update(A, "q", [50, 51, 7, 1, 2])
    draft = store.propose(A, "q", 2)
    assert (draft.tokens, draft.source) == ((9, 9), "other")  # the longest match wins: "7 1 2"


def test_a_draft_never_crosses_a_namespace():
    store = DraftStore(1000)
    store.update(A, "a", [1, 2, 3, 4, 5])
    store.update(B, "b", [9, 1, 2])
    assert store.propose(B, "b", 3) is None
    store.update(A, "a2", [9, 1, 2])
    assert store.propose(A, "a2", 3).tokens == (3, 4, 5)


def test_finished_sequences_are_evicted_oldest_first_and_running_ones_never():
    store = DraftStore(12)
    store.update(A, "old", [1, 2, 3, 4, 5])
    store.finish(A, "old")
    store.update(A, "running", [6, 7, 8, 9, 10, 11])
    store.update(A, "new", [1, 2, 30, 31, 32])  # over budget: "old" goes
    assert store.tokens <= 12 and store.evicted_tokens == 5
    assert store.propose(A, "new", 2) is None  # "1 2" is known only from the new request itself, at its end
    store.update(A, "more", list(range(40, 60)))  # only running sequences left: kept over budget
    assert store.propose(A, "running", 1) is None and store.tokens == 31


def test_a_rewritten_request_is_indexed_afresh():
    store = DraftStore(1000)
    store.update(A, "r", [1, 2, 3, 4])
    store.update(A, "r", [7, 8, 1, 2])  # retracted and re-run with other tokens
    assert store.tokens == 4 and store.propose(A, "r", 2) is None


# ---------------------------------------------------------------- the draft length


def test_expected_tokens_is_the_geometric_sum():
    assert expected_tokens(0.5, 0) == 1
    assert math.isclose(expected_tokens(0.5, 3), 1.875)


def test_acceptance_counts_accepted_drafts_against_stopped_rows():
    rate = Acceptance(accepted=0, stopped=0)
    rate.observe(drafted=4, accepted=4)
    rate.observe(drafted=4, accepted=1)
    assert rate.rate == pytest.approx(5 / 6)


def test_a_gpu_profile_drafts_longer_than_a_cpu_where_a_row_costs_a_step():
    gpu = DraftLength("gpu", 8, gpu=cost_model.load())
    cpu = DraftLength("cpu", 8)
    cpu.cpu.wide = 100  # past exploration: the prior line alone
    for lengths in (gpu, cpu):
        lengths.sources["self"] = Acceptance(accepted=60, stopped=40)  # a = 0.6
    available = [(8, "self")] * 4
    assert gpu.width(available) >= 6  # on an H100 a wider step costs little
    assert cpu.width(available) == 1  # at 0.3 + 0.7 per token, 0.6 acceptance does not pay
    cpu.sources["self"] = Acceptance(accepted=95, stopped=5)
    assert cpu.width(available) > 1  # near-certain drafts do


def test_the_cpu_line_is_fitted_to_timed_forwards():
    cpu = DraftLength("cpu", 8)
    for tokens in (1, 2, 4, 8, 1, 3):
        cpu.cpu.observe(tokens, 0.05 + 0.002 * tokens)
    base, per_token = cpu.cpu.line()
    assert per_token / base < 0.2  # the measured line: a token costs little beside the step's base
    assert cpu.width([(8, "self")]) > 1


def test_no_drafts_means_one_token():
    assert DraftLength("cpu", 8).width([(0, ""), (0, "")]) == 1


# ---------------------------------------------------------------- chain verification


def _logits_preferring(tokens: list[list[int]], vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(len(tokens), len(tokens[0]), vocab)
    for i, row in enumerate(tokens):
        for j, t in enumerate(row):
            logits[i, j, t] = 5.0
    return logits


def test_greedy_keeps_the_argmax_chain():
    draft = torch.tensor([[0, 3, 4, 5], [0, 3, 4, 5], [0, 1, 1, 1]])
    logits = _logits_preferring([[3, 4, 6, 9], [7, 4, 5, 9], [2, 2, 2, 2]])
    verdict = verify_greedy(draft, [3, 3, 0], logits)
    assert verdict.tokens == [[3, 4, 6], [7], [2]]
    assert verdict.accepted == [2, 0, 0]


def test_greedy_never_accepts_padding_past_a_rows_draft():
    draft = torch.tensor([[0, 3, 4, 4]])
    logits = _logits_preferring([[3, 4, 4, 8]])
    assert verify_greedy(draft, [1], logits).tokens == [[3, 4]]


def test_sampling_probs_apply_temperature_top_k_and_top_p():
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]])
    one = torch.ones(1)
    full = sampling_probs(logits, one, torch.tensor([100]), one, torch.zeros(1))
    assert torch.allclose(full[0, 0], torch.softmax(logits[0, 0], -1))
    top2 = sampling_probs(logits, one, torch.tensor([2]), one, torch.zeros(1))
    assert top2[0, 0, 2:].sum() == 0 and math.isclose(float(top2[0, 0].sum()), 1.0, rel_tol=1e-6)
    nucleus = sampling_probs(logits, one, torch.tensor([100]), torch.tensor([0.5]), torch.zeros(1))
    assert nucleus[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    rows = torch.cat([logits.expand(1, 3, 4), logits.expand(1, 3, 4)])  # two rows of three positions
    wide = sampling_probs(rows, torch.ones(2), torch.tensor([1, 100]), torch.ones(2), torch.zeros(2))
    assert wide.shape == (2, 3, 4) and wide[0, :, 0].tolist() == [1.0, 1.0, 1.0]
    assert torch.allclose(wide[1, 2], torch.softmax(logits[0, 0], -1))


def chi_square_differs(a: list[tuple], b: list[tuple], alpha: float = 0.001) -> bool:
    """Two-sample chi-square test of homogeneity on the outcomes' counts (categories seen fewer than 5 times
    in both together pooled); True where the samples differ at level `alpha` (the false-alarm rate)."""
    from scipy.stats import chi2_contingency

    keys = sorted(set(a) | set(b))
    counts = [[a.count(k) for k in keys], [b.count(k) for k in keys]]
    big = [i for i, k in enumerate(keys) if counts[0][i] + counts[1][i] >= 5]
    small = [i for i in range(len(keys)) if i not in big]
    table = [[row[i] for i in big] + ([sum(row[i] for i in small)] if small else []) for row in counts]
    table = [
        [x for x, keep in zip(row, [sum(c) > 0 for c in zip(*table, strict=True)], strict=True) if keep]
        for row in table
    ]
    if len(table[0]) < 2:
        return False
    return chi2_contingency(table).pvalue < alpha


def _direct_samples(probs: torch.Tensor, n: int, generator: torch.Generator) -> list[tuple]:
    """First tokens drawn from the model's first distribution: what decoding without drafts emits."""
    return [(int(torch.multinomial(probs[0, 0], 1, generator=generator)),) for _ in range(n)]


def test_sampled_verification_keeps_the_models_distribution_and_accept_all_does_not():
    """The emitted first token must follow p_0 whatever the draft; an 'accept every draft' verifier emits the
    draft itself. Chi-square at a stated false-alarm rate of 0.001."""
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.tensor([[[1.0, 0.5, 0.2, 0.0, -0.5], [0.0, 2.0, 0.0, 0.0, 0.0]]]), -1)
    draft = torch.tensor([[4, 1, 1]])  # the draft proposes token 1 first: p_0(1) is 0.27
    n = 3000
    verified = [tuple(verify_sampled(draft, [1], probs, generator).tokens[0][:1]) for _ in range(n)]
    direct = _direct_samples(probs, n, generator)
    assert not chi_square_differs(verified, direct)
    accept_all = [(1,)] * n
    assert chi_square_differs(accept_all, direct)


def test_sampled_verification_accepts_a_likely_draft_often():
    generator = torch.Generator().manual_seed(1)
    probs = torch.tensor([[[0.05, 0.9, 0.05], [0.1, 0.1, 0.8]]])
    draft = torch.tensor([[0, 1]])
    accepted = sum(verify_sampled(draft, [1], probs, generator).accepted[0] for _ in range(2000))
    assert 0.85 * 2000 < accepted < 0.95 * 2000


# ---------------------------------------------------------------- settings


def test_draft_flags_are_checked_in_one_line():
    _, settings = config.split_args(["--rksc-drafts", "on", "--rksc-draft-max-tokens", "4"])
    assert settings.drafts.on and settings.drafts.max_tokens == 4
    with pytest.raises(config.ConfigError, match=r"--rksc-draft-max-tokens must be in \[1, 16\], got 40"):
        config.split_args(["--rksc-draft-max-tokens", "40"])
    with pytest.raises(config.ConfigError, match="--rksc-draft-profile must be one of auto, cpu, gpu"):
        config.split_args(["--rksc-draft-profile", "tpu"])


def test_drafts_with_head_compression_or_sglangs_own_speculative_flags_are_refused():
    from sglang_rksc.drafts.hooks import launch_refusal

    _, with_heads = config.split_args(["--rksc-drafts", "on", "--rksc-head-compression", "0.4"])
    assert "head compression" in launch_refusal(with_heads, [])
    _, plain = config.split_args(["--rksc-drafts", "on"])
    assert launch_refusal(plain, []) is None
    assert "--speculative-algorithm" in launch_refusal(plain, ["--speculative-algorithm", "NGRAM"])
    _, off = config.split_args([])
    assert launch_refusal(off, ["--speculative-algorithm", "NGRAM"]) is None


def test_the_per_request_option_is_checked():
    from sglang_rksc.wire import check_custom_params

    check_custom_params({"rksc": {"drafts": False}})
    with pytest.raises(ValueError, match="drafts must be true or false"):
        check_custom_params({"rksc": {"drafts": "no"}})


def test_a_frequent_gram_of_the_request_itself_does_not_crowd_out_a_sibling():
    prefix = list(range(200, 240))
    store = DraftStore(10_000)
    store.update(A, "sibling", [*prefix, 1, 2, 3, 4, 1, 2, 70, 71, 72])
    store.update(A, "r", [*prefix, *([5, 1, 2] * 20), 3, 4, 1, 2])  # "1 2" forty times of its own
    draft = store.propose(A, "r", 3)
    assert (draft.tokens, draft.source) == ((70, 71, 72), "branch")  # the sibling matches "1 2 3 4 1 2"


def test_the_newest_tokens_of_a_request_draft_for_the_others():
    store = DraftStore(1000)
    store.update(A, "a", [1, 2, 3])
    store.extend(A, "a", [4, 5, 6])  # its last verify step's tokens, before the scheduler commits them
    store.extend(A, "unknown", [9])  # a request never seen is not invented
    store.update(A, "b", [8, 3, 4])
    assert store.propose(A, "b", 2).tokens == (5, 6) and store.tokens == 9


def test_verify_attention_is_the_causal_attention_of_the_whole_sequence_at_the_drafted_positions():
    """Against SDPA over every position (SGLang's torch-native extend computes that), taking the last rows."""
    from torch.nn.functional import scaled_dot_product_attention

    from sglang_rksc.drafts.attention import verify_attention

    torch.manual_seed(0)
    heads, kv_heads, dim, width = 4, 2, 8, 3
    lengths = [5, 9]
    k_cache, v_cache = torch.randn(32, kv_heads, dim), torch.randn(32, kv_heads, dim)
    req_to_token = torch.stack([torch.arange(0, 16), torch.arange(16, 32)])
    q = torch.randn(len(lengths) * width, heads, dim)
    out = verify_attention(q, k_cache, v_cache, req_to_token, [0, 1], lengths, width, 0.3)
    for row, length in enumerate(lengths):
        slots = req_to_token[row, : length + width]
        full_q = torch.randn(heads, length + width, dim)
        full_q[:, length:] = q[row * width : (row + 1) * width].movedim(0, 1)
        keys, values = k_cache[slots].movedim(0, 1), v_cache[slots].movedim(0, 1)
        ref = scaled_dot_product_attention(
            full_q[None], keys[None], values[None], is_causal=True, scale=0.3, enable_gqa=True
        )[0, :, length:]
        assert torch.allclose(out[row * width : (row + 1) * width], ref.movedim(0, 1), atol=1e-5)


def test_growing_a_sequence_indexes_each_occurrence_once():
    """An n-gram ending where a sequence stopped is not indexed again when it grows: the occurrences kept
    per sequence are real ones."""
    store = DraftStore(1000)
    store.update(A, "r", [1, 2, 3, 1, 2])
    store.extend(A, "r", [4])  # "1 2" at the old end must keep its earlier occurrence (followed by 3)
    assert store._spaces[A].index[(1, 2)]["r"] == [2, 5]  # not [5, 5]: the occurrence at 2 still drafts
    store.extend(A, "r", [5, 1, 2])
    assert store.propose(A, "r", 1).tokens == (4,)  # of two equal matches, the more recent


def test_a_request_that_runs_again_is_not_evicted():
    store = DraftStore(8)
    store.update(A, "r", [1, 2, 3, 4])
    store.finish(A, "r")  # left the batch (retracted)
    store.update(A, "r", [1, 2, 3, 4, 5])  # back
    store.update(A, "other", [9, 9, 9, 9])  # over budget: only finished sequences may go
    assert store.length(A, "r") == 5
