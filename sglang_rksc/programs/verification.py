"""How a program's verification step is run: SGLang's `select`, or sglang-rksc's `verify`.

`--verifier` picks it:
- `select`: SGLang's own select (the stock reference);
- `full`: `verify` with no gate and no layer exit (one server call at full depth);
- `cgee`: `verify` with the confidence gate (`CALIBRATED_GATE`) and the layer exit;
- `audit`: as `cgee`, but the server runs every layer and reports the full-depth
  verdict beside the CGEE one, so disagreement is measured call by call.
A verdict read against the model's calibrated threshold (`Verifier.threshold`) is
neither gated nor cut short, in `cgee` and `audit` alike: it is one full-depth call.
Each call leaves a record (`record`) that the programs keep in their result rows and
the benchmark aggregates (`summarize`).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

VERIFIERS = ("select", "full", "cgee", "audit")

# The programs' gate, tuned on the calibration slice (self_consistency_verify on GSM8K 0-11 with
# SmolLM2-135M, 48 audited calls, `python -m sglang_rksc.tools.cgee.calibrate`): RKSC's starting
# points skipped 47 of 48 calls and 3 of those skips went against the full-depth verdict; these
# skipped 19 with none against it.
CALIBRATED_GATE = {"top": 0.8, "margin": 0.3, "alt_top": 0.8, "rel_margin": 0.4}


@dataclass(frozen=True)
class Verifier:
    """A program's verification step (`--verifier`) with the served model's gate and exit parameters
    (its profile in `model_profiles`; the server's defaults where the profile sets none)."""

    mode: str = "select"
    gate: Mapping[str, float] = field(default_factory=lambda: dict(CALIBRATED_GATE))
    exit_params: Mapping[str, Any] = field(default_factory=dict)
    threshold: float | None = None  # verdict threshold on the accepting choice (the model's, yes/no programs)

    @property
    def gated(self) -> bool:
        """Whether CGEE's gate and layer exit apply. Not to a thresholded verdict: on Qwen2.5-Coder-1.5B it
        departs from full depth's in 29-46% of calls at any exit before layer 27 (tools.cgee.threshold, GSM8K
        0-99), and the gate skipped 57 of 112 self-consistency calls (GSM8K 300-327), 5 of them against it: the
        candidate's confidence says nothing of whether P(yes) reaches the threshold (docs/answer-costs.md)."""
        return self.mode in ("cgee", "audit") and self.threshold is None


def as_verifier(verifier: Verifier | str) -> Verifier:
    return verifier if isinstance(verifier, Verifier) else Verifier(verifier)


def add_argument(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--verifier",
        choices=VERIFIERS,
        default="select",
        help="verification step: SGLang's select; verify at full depth; verify with CGEE (gate and layer exit); "
        "or CGEE audited against full depth",
    )


def candidate_args(verifier: Verifier | str) -> dict[str, Any]:
    """Extra `gen` arguments for a candidate that a gated verification will judge."""
    return {"return_logprob": True, "top_logprobs_num": 2} if as_verifier(verifier).gated else {}


def step(name: str, choices: list[str], verifier: Verifier | str, *, candidate: str | None, accept: int = 0) -> Any:
    """The SGLang expression of one verification. `candidate` is the variable the gate judges by its
    generation's confidence; None for a written (not generated) text, which only the layer exit applies to."""
    import sglang as sgl

    verifier = as_verifier(verifier)
    if verifier.mode == "select":
        return sgl.select(name, choices=choices)
    from sglang_rksc.lang import Gate, verify

    gated = verifier.gated
    gate_it = gated and candidate is not None
    return verify(
        name,
        choices=choices,
        candidate=candidate if gate_it else None,
        gate=Gate(**verifier.gate) if gate_it else False,
        early_exit=gated,
        accept=accept,
        audit=verifier.mode == "audit",
        threshold=verifier.threshold,
        **(dict(verifier.exit_params) if gated else {}),
    )


def probabilities(meta: Mapping[str, Any] | None, choices: Sequence[str]) -> list[float] | None:
    """The verdict distribution over the choices: from `verify`, or from `select`'s token logprobs on the
    same scale (`lang.verify.select_probabilities`), so that votes weighted by it mean the same in every mode."""
    from sglang_rksc.lang.verify import select_probabilities

    meta = meta or {}
    if meta.get("probs") is not None and len(meta["probs"]) == len(choices):
        return list(meta["probs"])
    return select_probabilities(meta, len(choices))


def record(verdict: str, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """What one verification call did, for the result rows."""
    meta = meta or {}
    return {
        "verdict": verdict,
        "skipped": bool(meta.get("skipped", False)),
        "layers_run": meta.get("layers_run"),
        "num_layers": meta.get("num_layers"),
        "exit_layer": meta.get("exit_layer"),
        "full_verdict": meta.get("full_verdict"),
        "confidence": meta.get("confidence"),
        # This call's share of the server forward that computed it (batch time / verifications in it).
        "server_seconds": meta.get("server_seconds"),
        # Audited calls: the choice distribution after every layer, for calibrating the exit rule.
        "profile": meta.get("profile"),
    }


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Calls and skips; the depth run where the server reported it (CGEE), the disagreement with the
    full-depth verdict where calls were audited, the server's forward time where it was measured.
    A figure that does not apply (SGLang's `select` reports no depth) is left out, not None."""
    records = list(records)
    if not records:
        return {}
    ran = [r for r in records if not r["skipped"] and r["layers_run"] and r["num_layers"]]
    audited = [r for r in records if r["full_verdict"] is not None]
    seconds = [r["server_seconds"] for r in records if r["server_seconds"] is not None]
    out: dict[str, Any] = {"verify_calls": len(records), "verify_skipped": sum(r["skipped"] for r in records)}
    if ran:
        out["verify_mean_layers_run"] = statistics.mean(r["layers_run"] for r in ran)
        out["verify_num_layers"] = ran[0]["num_layers"]
    if audited:
        out["verify_audited"] = len(audited)
        out["verify_disagreements"] = sum(r["verdict"] != r["full_verdict"] for r in audited)
    if seconds:
        out["verify_server_seconds"] = sum(seconds)
    return out
