"""`bench.probe_pairs`: which pairs it scores, and its figures on the default model's probe."""

from __future__ import annotations

import json
from pathlib import Path

from sglang_rksc.asks.planning import SpanRules
from sglang_rksc.bench import probe_pairs
from sglang_rksc.bench.journal import Journal

ROWS = {
    300: {"question": "aaaa", "solutions": ["xx", "xy", "xxxxxxx"], "sample_answers": ["1", "2", "1"]},
    301: {"question": "bbbbb", "solutions": ["zz", "zz"], "sample_answers": ["3", "3"]},
    302: {"question": "c" * 20, "solutions": ["q"], "sample_answers": ["4"]},
}


def test_pairs_are_kinds_of_spans_the_span_rules_allow():
    def score(a, b) -> float:
        return 1.0 if a == b else 0.5

    scores = probe_pairs.pair_scores(ROWS, lambda text: [ord(c) for c in text], score, SpanRules(1, 1.5))
    # Questions 300 and 301 (4 and 5 tokens) are comparable, 302 (20) with neither; "xxxxxxx" with nothing.
    assert scores == {"questions": [0.5], "solutions, same answer": [1.0], "solutions, different answers": [0.5]}
    figures = probe_pairs.summary(scores, threshold=0.9)
    assert figures["solutions, same answer"] == {"pairs": 1, "median": 1.0, "max": 1.0, "at_threshold": 1}
    assert figures["questions"]["at_threshold"] == 0


def test_the_tool_scores_a_journal_with_the_models_probe(default_model_dir: Path, tmp_path: Path, capsys):
    journal = Journal(tmp_path / "journal.jsonl", {"program": "self_consistency_verify"}, resume=False)
    segment = journal.segment("radix#0")
    rows = {
        300: {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
              "solutions": ["He has 3 + 4 = 7 apples. The answer is 7.", "He has 3 + 4 = 7 apples. The answer is 7.",
                            "Three and four make eight apples. The answer is 8."],
              "sample_answers": ["7", "7", "8"]},
        301: {"question": "A train goes 60 miles in 2 hours. What is its speed in miles per hour?",
              "solutions": ["60 / 2 = 30. The answer is 30."], "sample_answers": ["30"]},
    }  # fmt: skip
    for index, row in rows.items():
        segment.row(index, row, 1.0, {})
    out = tmp_path / "probe.json"
    argv = [str(tmp_path), "--model-path", str(default_model_dir), "--output", str(out)]
    assert probe_pairs.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["problems"] == 2 and result["questions"]["pairs"] == 1
    assert result["solutions, same answer"] == {"pairs": 1, "median": 1.0, "max": 1.0, "at_threshold": 1}
    assert result["solutions, different answers"]["pairs"] == 2 and result["questions"]["max"] < 1.0
    assert "at or above the threshold" in capsys.readouterr().out
    # Not a self-consistency journal, or no rows of the mode: a clear error, status 2.
    assert probe_pairs.main([str(tmp_path), "--mode", "rksc-full", "--model-path", str(default_model_dir)]) == 2
    other = tmp_path / "other"
    Journal(other / "journal.jsonl", {"program": "tree_of_thought"}, resume=False)
    assert probe_pairs.main([str(other)]) == 2
    assert "not a self_consistency_verify run" in capsys.readouterr().err
