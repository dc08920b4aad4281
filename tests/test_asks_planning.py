"""ASKS fork planning on token lists alone (no tree, no request, no model)."""

from __future__ import annotations

from sglang_rksc.asks.planning import (
    ANCHOR_TOKENS,
    Alias,
    SpanRules,
    align,
    best_probe_plan,
    fits_context,
    plan_from_aliases,
    probe_counterparts,
)

RULES = SpanRules(min_span=8, length_ratio=1.5)
P = [1, 2, 3]  # the cached prefix
S = list(range(100, 110))  # the request's own span
C = list(range(200, 211))  # a sibling's span, one token longer
TAIL = list(range(50, 50 + 2 * ANCHOR_TOKENS))  # where both go on together
SPACE = (None, None)


def test_an_alias_replaces_the_span_it_names_if_its_donor_is_cached():
    alias = Alias(tuple(S), tuple(C), 0.97, SPACE)
    prompt = P + S + [7, 8]
    plan = plan_from_aliases(prompt, len(P), [alias], SPACE, donor_cached=lambda a: True)
    assert plan.source == "alias" and plan.new_ids == P + C + [7, 8]
    assert (plan.prefix_len, plan.span_len, plan.donor) == (3, len(S), tuple(C))
    assert plan_from_aliases(prompt, len(P), [alias], SPACE, donor_cached=lambda a: False) is None
    assert plan_from_aliases(prompt, len(P), [alias], ("tenant", None), donor_cached=lambda a: True) is None
    assert plan_from_aliases(P + S[:5], len(P), [alias], SPACE, donor_cached=lambda a: True) is None


def test_the_request_rejoins_the_donor_where_they_share_anchor_tokens_and_stay_together():
    assert align(S + TAIL, C + TAIL, RULES) == (len(S), len(C))
    # A chance n-gram that does not go on together is no rejoin.
    assert align(S + TAIL[:ANCHOR_TOKENS] + [9] * 12, C + TAIL[:ANCHOR_TOKENS] + [8] * 12, RULES) is None
    assert align(S[:4] + TAIL, C + TAIL, RULES) is None  # the span would be shorter than min_span


def test_probe_candidates_and_the_best_plan():
    assert probe_counterparts(S + TAIL, C + TAIL, False, RULES) == (len(S), tuple(C))
    # A leaf donor stands for a request that ends with its span; an identical span is no fork.
    assert probe_counterparts(S, C, True, RULES) == (len(S), tuple(C))
    assert probe_counterparts(S, C, False, RULES) is None
    assert probe_counterparts(C, C, True, RULES) is None
    far = list(range(300, 330))
    assert probe_counterparts(S, far, True, RULES) is None  # lengths too far apart

    prompt = P + S + TAIL
    candidates = [(len(S), tuple(C)), (len(S), tuple(range(900, 911)))]
    score = {tuple(C): 0.99, tuple(range(900, 911)): 0.985}
    plan = best_probe_plan(prompt, len(P), candidates, lambda span, donor: score[tuple(donor)], threshold=0.98)
    assert plan.source == "probe" and plan.donor == tuple(C) and plan.new_ids == P + C + TAIL
    assert best_probe_plan(prompt, len(P), candidates, lambda s, d: score[tuple(d)], threshold=0.995) is None
    assert fits_context(plan, max_new_tokens=10, context_len=len(plan.new_ids) + 10)
    assert not fits_context(plan, max_new_tokens=11, context_len=len(plan.new_ids) + 10)
