"""The benchmark's bookkeeping, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglang_rksc.bench import modes, report, server_stats
from sglang_rksc.bench.compare import check_slice, server_log_path
from sglang_rksc.bench.report import Run
from sglang_rksc.config import RkscConfig
from sglang_rksc.runtime import cost_model


def test_modes_resolve_in_order_and_refuse_unknown_names():
    assert [m.name for m in modes.resolve(["radix", "no-cache"])] == ["radix", "no-cache"]
    assert modes.MODES["rksc-evict"].server_args[-2:] == ("--radix-eviction-policy", "rsbcm")
    assert modes.MODES["rksc-cgee"].program_args == ("--verifier", "cgee")
    merge, full = modes.MODES["rksc-merge"], modes.MODES["rksc-full"]
    assert merge.server_args[-2:] == ("--rksc-span-embeddings", "on")
    assert merge.program_args == ("--merge-branches", str(modes.MERGE_THRESHOLD))
    # rksc-full holds the default set: ASKS, RSBCM, reuse, span embeddings, CGEE and merging; head compression and
    # packets left it for their price in answers (issue 34).
    for flag in ("--rksc-semantic", "--rksc-reuse", "--rksc-span-embeddings", "rsbcm"):
        assert flag in full.server_args
    assert "--rksc-packets" not in full.server_args and "--rksc-head-compression" not in full.server_args
    assert full.program_args == ("--verifier", "cgee", "--merge-branches", str(modes.MERGE_THRESHOLD))
    # rksc-full+heads turns on every mechanism: rksc-full as it was before either left.
    heads = modes.MODES["rksc-full+heads"]
    assert heads.server_args == (*full.server_args, "--rksc-packets", "on", "--rksc-head-compression", "0.4")
    assert heads.program_args == full.program_args
    with pytest.raises(ValueError, match="unknown mode"):
        modes.resolve(["radix", "turbo"])
    with pytest.raises(ValueError, match="twice"):
        modes.resolve(["radix", "radix"])


def test_merge_threshold_in_the_mode_name():
    (mode,) = modes.resolve(["rksc-merge@0.9"])
    assert mode.name == "rksc-merge@0.9" and mode.program_args == ("--merge-branches", "0.9")
    assert mode.server_args == modes.MODES["rksc-merge"].server_args and "0.9" in mode.description
    (asks,) = modes.resolve(["rksc-asks@0.8"])
    assert asks.server_args[-2:] == ("--rksc-threshold", "0.8")
    with pytest.raises(ValueError, match="similarity"):
        modes.resolve(["rksc-merge@1.5"])
    with pytest.raises(ValueError, match="number"):
        modes.resolve(["rksc-merge@high"])
    # Any mode that merges takes one: rksc-full@0.9 merges at 0.9 in every program, self-consistency included.
    (full,) = modes.resolve(["rksc-full@0.9"])
    assert full.program_args == ("--verifier", "cgee", "--merge-branches", "0.9")
    assert full.server_args == modes.MODES["rksc-full"].server_args and "self-consistency included" in full.description
    with pytest.raises(ValueError, match="takes no thresholds"):
        modes.resolve(["rksc-cgee@0.9"])
    with pytest.raises(ValueError, match="takes no thresholds"):
        modes.resolve(["radix@0.9"])


def test_head_compression_sparsity_in_the_mode_name():
    (default, sparse, pooled, windowed, dealt) = modes.resolve(
        ["rksc-heads", "rksc-heads@0.6", "rksc-heads@0.4/0.5", "rksc-heads@0.6/0.5/w256", "rksc-heads@0.4/w256/r3"]
    )
    assert default.server_args[-2:] == ("--rksc-head-compression", "0.4")
    assert sparse.name == "rksc-heads@0.6" and sparse.server_args[-2:] == ("--rksc-head-compression", "0.6")
    assert pooled.server_args[-4:] == ("--rksc-head-compression", "0.4", "--rksc-window-pool", "0.5")
    assert windowed.server_args[-6:] == (
        "--rksc-head-compression", "0.6", "--rksc-window-pool", "0.5", "--rksc-window", "256",
    )  # fmt: skip
    assert dealt.server_args[-4:] == ("--rksc-window", "256", "--rksc-head-mask", "random:3")
    cases = (("rksc-heads@0", "sparsity"), ("rksc-heads@1", "sparsity"), ("rksc-heads@x", "number"),
             ("rksc-heads@0.4/0", "window pool"), ("rksc-heads@0.4/y", "number"),
             ("rksc-heads@0.4/w0", "window"), ("rksc-heads@0.4/w1.5", "whole number"),
             ("rksc-heads@0.4/wx", "number"), ("rksc-heads@0.4/r1.5", "whole number"),
             ("rksc-heads@0.4/rx", "number"))  # fmt: skip
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            modes.resolve([bad])


def test_slices_never_mix():
    assert check_slice("tree_of_thought", 300, 20) == "reporting"
    assert check_slice("tree_of_thought", 0, 300) == "calibration"
    with pytest.raises(ValueError, match="mix"):
        check_slice("self_consistency_verify", 290, 20)
    assert check_slice("game_of_24", 290, 20) == "game24"


def test_parse_prometheus_sums_label_sets():
    text = """# HELP sglang:prompt_tokens_total x
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="m",stream="0"} 100.0
sglang:prompt_tokens_total{model_name="m",stream="1"} 20.0
sglang:num_requests_total{model_name="m"} 7.0
"""
    assert server_stats.parse_prometheus(text) == {
        "sglang:prompt_tokens_total": 120.0,
        "sglang:num_requests_total": 7.0,
    }
    assert server_stats.difference({"a": 5.0, "b": 2.0}, {"a": 1.0}) == {"a": 4.0, "b": 2.0}


def _run(mode: str, repeat: int, seconds: float, predictions: list, generated: float = 100.0) -> Run:
    rows = [{"index": i, "prediction": p, "correct": p == "1"} for i, p in enumerate(predictions)]
    server = {
        "requests": 10.0,
        "generated_tokens": generated,
        "prompt_tokens": 1000.0,
        "cached_tokens": 900.0,
        "decode_steps": 50.0,
        "decode_rows": 200.0,
        "prefill_tokens": 100.0,
    }
    return Run(mode, repeat, seconds, rows, server)


def test_summaries_ratios_and_agreement():
    radix = [_run("radix", 0, 10.0, ["1", "2"]), _run("radix", 1, 12.0, ["1", "2"])]
    fast = [_run("rksc", 0, 5.0, ["1", "3"]), _run("rksc", 1, 6.0, ["1", "2"])]
    slow = [_run("no-cache", 0, 20.0, ["1", "2"]), _run("no-cache", 1, 22.0, ["1", "2"])]
    summaries = [
        report.summarize_mode(modes.MODES[name], runs, radix)
        for name, runs in (("no-cache", slow), ("radix", radix), ("rksc", fast))
    ]
    summaries.append(report.summarize_mode(modes.MODES["rksc-merge"], [], radix))  # a mode with no run
    report.add_speedups(summaries)
    nocache, rad, rksc, cgee = (s.figures for s in summaries)
    assert rad["speedup_vs_radix"] == 1.0 and rksc["speedup_vs_radix"] == pytest.approx(11.0 / 5.5)
    assert rksc["speedup_vs_no_cache"] == pytest.approx(21.0 / 5.5)
    assert rksc["agreement_with_radix"] == pytest.approx(0.75)  # one of four answers differs
    assert rksc["wall_s_min"] == 5.0 and rksc["wall_s_max"] == 6.0
    assert rksc["prompt_tokens_computed"] == 100.0 and rksc["mean_decode_batch"] == 4.0
    assert rksc["semantic_hits"] is None and cgee == {}
    table = report.markdown_table(summaries)
    assert "| rksc-merge | no run |" in table
    assert "2.00x" in table


def test_agreement_needs_the_same_problems():
    with pytest.raises(ValueError):
        report.agreement([{"index": 5, "prediction": "1"}], [{"index": 6, "prediction": "1"}])


def _probe(mode: modes.Mode) -> str:
    """The value of `--rksc-probe` in a mode's server flags (the server's default when absent)."""
    args = list(mode.server_args)
    return args[args.index("--rksc-probe") + 1] if "--rksc-probe" in args else "default"


def test_the_probe_is_off_and_named_in_the_default_set_and_on_in_its_own_modes():
    """The probe left the default set (one GSM8K answer taken from another problem, issue 34). Its flag is named
    in every mode with ASKS, so a journal written while it defaulted on cannot be resumed under the same name."""
    for name in ("rksc-asks", "rksc-full", "rksc-full+heads", "rksc-full+drafts"):
        assert _probe(modes.MODES[name]) == "off", name
    assert RkscConfig().semantic.probe is False
    for name in ("rksc-asks", "rksc-full"):
        base, probed = modes.MODES[name], modes.MODES[name + "+probe"]
        assert _probe(probed) == "on" and probed.program_args == base.program_args
        assert [a for a in probed.server_args if a != "on"] == [a for a in base.server_args if a not in ("off", "on")]


def test_threshold_variants_of_the_semantic_mode():
    plain, strict = modes.resolve(["rksc-asks", "rksc-asks@0.9/0.95"])
    assert strict.name == "rksc-asks@0.9/0.95"
    assert strict.server_args[-4:] == ("--rksc-threshold", "0.9", "--rksc-probe-threshold", "0.95")
    assert "--rksc-threshold" not in plain.server_args
    # A probe threshold turns the probe on; one threshold leaves it off, as in rksc-asks.
    assert _probe(strict) == "on" and _probe(plain) == "off" and _probe(modes.resolve(["rksc-asks@0.9"])[0]) == "off"
    with pytest.raises(ValueError, match="takes no thresholds"):
        modes.resolve(["radix@0.9"])
    with pytest.raises(ValueError, match="cosines"):
        modes.resolve(["rksc-asks@2"])


def test_server_logs_stay_in_the_output_folder(tmp_path):
    path = server_log_path(tmp_path, "rksc-asks@0.9/0.95", 1)
    assert path.parent == tmp_path and path.name == "server-rksc-asks@0.9_0.95-1.log"


def _verification(verdict: str, skipped: bool, layers: int | None, full: str | None) -> dict:
    return {
        "verdict": verdict,
        "skipped": skipped,
        "layers_run": layers,
        "num_layers": 30,
        "exit_layer": layers,
        "full_verdict": full,
        "confidence": None,
        "server_seconds": 0.5 if layers else None,
    }


def test_verification_figures_come_from_the_call_records():
    rows = [
        {
            "index": 0,
            "prediction": "1",
            "correct": True,
            "verifications": [_verification("yes", True, 0, "no"), _verification("no", False, 20, "no")],
        },
        {"index": 1, "prediction": "2", "correct": False, "verifications": [_verification("no", False, 24, "no")]},
    ]
    run = Run("rksc-cgee-audit", 0, 10.0, rows, {})
    figures = report.summarize_mode(modes.MODES["rksc-cgee-audit"], [run], []).figures
    assert figures["verify_calls"] == 3 and figures["verify_skipped"] == 1
    assert figures["verify_mean_layers_run"] == 22.0 and figures["verify_server_seconds"] == 1.0
    assert figures["verify_audited"] == 3 and figures["verify_disagreements"] == 1
    summary = report.ModeSummary(
        "rksc-cgee-audit", "", figures={**figures, "speedup_vs_radix": None, "speedup_vs_no_cache": None}
    )
    assert "1 of 3 (33.3%)" in report.markdown_table([summary])


def test_merged_branches_and_the_majority_baseline_are_reported():
    rows = [
        {"index": 0, "prediction": "1", "correct": True, "majority_correct": False, "merged_branches": 2},
        {"index": 1, "prediction": "2", "correct": False, "majority_correct": False, "merged_branches": 1},
    ]
    merged = Run("rksc-merge", 0, 10.0, rows, {})
    figures = report.summarize_mode(modes.MODES["rksc-merge"], [merged], []).figures
    assert figures["branches_merged"] == 3 and figures["majority_accuracy"] == 0.0 and figures["accuracy"] == 0.5
    plain = report.summarize_mode(modes.MODES["radix"], [_run("radix", 0, 10.0, ["1"])], []).figures
    assert plain["branches_merged"] is None and plain["majority_accuracy"] is None
    summary = report.ModeSummary(
        "rksc-merge", "", figures={**figures, "speedup_vs_radix": None, "speedup_vs_no_cache": None}
    )
    assert "| 3 | 0.50 | 0.00 |" in report.markdown_table([summary])


def test_the_drafts_modes():
    radix, full = modes.MODES["radix+drafts"], modes.MODES["rksc-full+drafts"]
    assert radix.server_args == ("--radix-cache-backend", "default", "--rksc-drafts", "on") and not radix.program_args
    # rksc-full's flags (no head compression: drafts are refused with it at launch), plus drafts.
    assert "--rksc-head-compression" not in full.server_args and "0.4" not in full.server_args
    assert full.server_args[-2:] == ("--rksc-drafts", "on")
    stock = modes.MODES["rksc-full"]
    assert full.server_args[:-2] == stock.server_args and full.program_args == stock.program_args
    assert "drafts" in full.description
    # `+` in a name goes through resolution and the log file's name.
    assert [m.name for m in modes.resolve(["radix", "radix+drafts", "rksc-full+drafts"])][1:] == [
        "radix+drafts",
        "rksc-full+drafts",
    ]
    with pytest.raises(ValueError, match="takes no thresholds"):
        modes.resolve(["radix+drafts@0.9"])
    assert server_log_path(Path("out"), "rksc-full+drafts", 0) == Path("out/server-rksc-full+drafts-0.log")


class _Response:
    def __init__(self, payload: dict | None = None, text: str = "", status_code: int = 200):
        self.payload, self.text, self.status_code = payload, text, status_code

    def json(self) -> dict:
        return self.payload


def _server_info(drafts: dict | None, by_batch: dict) -> dict:
    state = {"counters": {"decode_steps": float(sum(by_batch.values())), "decode_steps_by_batch": by_batch}}
    if drafts is not None:
        state["drafts"] = drafts
    return {"internal_states": [{"rksc": state}]}


def _drafts(steps: int, shapes: dict, drafted: dict, accepted: dict, rows: int, rows_drafted: int, emitted: int):
    return {
        "verify_steps": steps,
        "rows": rows,
        "rows_drafted": rows_drafted,
        "tokens_emitted": emitted,
        "drafted": drafted,
        "accepted": accepted,
        "accepted_histogram": {"self": {"0": 1, "2": 3}},
        "steps_by_shape": shapes,
        "verify_seconds": 0.5,
        "store_tokens": 100,
        "store_evicted_tokens": 0,
        "length": {"profile": "cpu"},
    }


def test_drafts_counters_are_flattened_and_subtracted(monkeypatch):
    payloads = iter(
        [
            _server_info(_drafts(3, {"4x8": 2, "1x1": 1}, {"self": 10}, {"self": 4}, 9, 8, 20), {"4": 2, "1": 1}),
            _server_info(
                _drafts(10, {"4x8": 5, "4x1": 1, "2x4": 4}, {"self": 30, "branch": 20}, {"self": 12, "branch": 15},
                        35, 30, 90),
                {"4": 9, "2": 4, "1": 1},
            ),
        ]
    )  # fmt: skip

    def get(url: str, timeout: float) -> _Response:
        return _Response(text="") if url.endswith("/metrics") else _Response(next(payloads))

    monkeypatch.setattr(server_stats.requests, "get", get)
    before = server_stats.snapshot("http://x")
    assert before["drafts_steps_by_shape/4x8"] == 2.0 and before["drafts_drafted/self"] == 10.0
    assert before["drafts_verify_steps"] == 3.0 and before["drafts_tokens_emitted"] == 20.0
    run = server_stats.difference(server_stats.snapshot("http://x"), before)
    assert run["drafts_verify_steps"] == 7.0 and run["drafts_rows"] == 26.0 and run["drafts_rows_drafted"] == 22.0
    assert run["drafts_drafted/self"] == 20.0 and run["drafts_drafted/branch"] == 20.0
    assert run["drafts_accepted/self"] == 8.0 and run["drafts_accepted/branch"] == 15.0
    assert server_stats.decode_steps_by_shape(run) == {(2, 4): 4, (4, 1): 1, (4, 8): 3}  # 1x1: none in the run
    assert server_stats.decode_steps_by_batch(run) == {2: 4, 4: 7}
    # Decode steps not in the drafts' shapes stay one-token steps: 7 at 4 rows, 4 of them drafts steps.
    assert server_stats.decode_step_shapes(run) == {(2, 4): 4, (4, 1): 4, (4, 8): 3}
    # Fewer decode steps by batch than drafts steps of those rows: never a negative count.
    assert server_stats.decode_step_shapes({"decode_steps_by_batch/4": 1.0, "drafts_steps_by_shape/4x8": 2.0}) == {
        (4, 8): 2
    }
    model = cost_model.load()
    projected = report.projected_seconds(Run("radix+drafts", 0, 1.0, [], {**run, "prefill_tokens": 0.0}), model)
    assert projected == pytest.approx((4 * model.step_ms(2, 4) + 4 * model.step_ms(4) + 3 * 7.644) / 1000)
    figures = report.drafts_figures([run])
    assert figures["accepted_per_verify_step"] == pytest.approx(23 / 22)
    assert figures["tokens_per_row_step"] == pytest.approx(70 / 26)
    assert figures["acceptance_by_source"] == {"branch": 0.75, "self": 0.4}
    assert report.drafts_acceptance(figures) == "branch 0.75 · self 0.40"
    assert report.drafts_tokens_per_step(figures) == "2.69 (1.05)"


def test_a_run_without_drafts_projects_as_before():
    model = cost_model.load()
    server = {"decode_steps_by_batch/1": 4.0, "decode_steps_by_batch/16": 3.0, "prefill_tokens": 5000.0}
    plain = Run("radix", 0, 1.0, [], server)
    assert server_stats.decode_steps_by_shape(server) == {}
    expected = model.project({1: 4.0, 16: 3.0}, 5000.0)["projected_s"]
    assert report.projected_seconds(plain, model) == expected
    assert expected == pytest.approx((4 * 6.614 + 3 * model.step_ms(16)) / 1000 + 5000 / model.prefill_tokens_per_s)
    # Recorded before the histogram: priced at the mean batch, as before.
    old = Run("radix", 0, 1.0, [], {"decode_steps": 50.0, "decode_rows": 200.0, "prefill_tokens": 0.0})
    assert report.projected_seconds(old, model) == pytest.approx(50 * model.step_ms(4) / 1000)
    figures = report.drafts_figures([server])
    assert figures == {
        "drafts_verify_steps": None,
        "accepted_per_verify_step": None,
        "tokens_per_row_step": None,
        "acceptance_by_source": None,
    }
    assert report.drafts_tokens_per_step(figures) == "-" and report.drafts_acceptance(figures) == "-"


def test_drafts_figures_and_decode_steps_against_radix_in_the_table():
    radix = _run("radix", 0, 10.0, ["1", "2"])
    drafted = _run("radix+drafts", 0, 8.0, ["1", "2"])
    drafted.server.update(
        {
            "decode_steps": 20.0,
            "drafts_verify_steps": 20.0,
            "drafts_rows": 80.0,
            "drafts_rows_drafted": 40.0,
            "drafts_tokens_emitted": 200.0,
            "drafts_drafted/self": 100.0,
            "drafts_accepted/self": 41.0,
            "drafts_drafted/branch": 100.0,
            "drafts_accepted/branch": 63.0,
        }
    )
    summaries = [
        report.summarize_mode(modes.MODES["radix"], [radix], [radix]),
        report.summarize_mode(modes.MODES["radix+drafts"], [drafted], [radix]),
    ]
    report.add_speedups(summaries)
    plain, ours = (s.figures for s in summaries)
    assert ours["decode_steps_vs_radix"] == pytest.approx(0.4) and plain["decode_steps_vs_radix"] == 1.0
    assert ours["tokens_per_row_step"] == 2.5 and ours["accepted_per_verify_step"] == pytest.approx(104 / 40)
    table = report.markdown_table(summaries)
    assert "| 1.00x | - | - |" in table  # radix: no drafts
    assert "| 0.40x | 2.50 (2.60) | branch 0.63 · self 0.41 |" in table
