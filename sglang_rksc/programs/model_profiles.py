"""What the programs ask of each model: generation budgets, the verification gate, the merge threshold.

A profile is chosen by the name of the model the server serves
(`RuntimeEndpoint.get_model_name()`: the model folder's path for our launcher);
a flag given on the command line always wins, and a model no profile names gets
the default model's. Each profile's figures were measured on the calibration
slice (GSM8K 0-299) with the commands in the README.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    name: str
    pattern: str  # matched, case-insensitively, against the served model's name
    # Tokens per generation, per program: what lets the model finish its step (bench.lengths).
    max_tokens: dict[str, int] = field(default_factory=dict)
    # The confidence gate of `verify` in the programs (`--verifier cgee|audit`).
    gate: dict[str, float] = field(default_factory=dict)
    # The similarity at which `--merge-branches auto` merges near-duplicate branches.
    merge_threshold: float = 0.8
    # Per-call overrides of the server's CGEE exit rule (`theta`, `eps`, `k`, `min_layer`); none: its defaults.
    exit_params: dict[str, float] = field(default_factory=dict)
    # The yes/no verification's verdict (self_consistency_verify, verifier_check): "yes" when P(yes) reaches this
    # (`verify(threshold=...)`, calibrated by tools.cgee.threshold); None: the more probable answer.
    verdict_threshold: float | None = None


SMOLLM2 = Profile(
    "smollm2-135m",
    r"smollm",
    max_tokens={"tree_of_thought": 128, "self_consistency_verify": 160, "game_of_24": 96},
    # SmolLM2-135M, 48 audited calls (GSM8K 0-11): RKSC's starting points skipped 47 of 48 with 3
    # against the full-depth verdict; this stricter gate skipped 19 with none against it.
    gate={"top": 0.8, "margin": 0.3, "alt_top": 0.8, "rel_margin": 0.4},
    # The lowest similarity that kept 90% of tree-of-thought answers (bench.merge_calibrate, GSM8K 0-23).
    merge_threshold=0.8,
)
QWEN_CODER_1_5B = Profile(
    "qwen2.5-coder-1.5b",
    r"qwen2\.5-coder-1\.5b",
    # Uncut lengths (GSM8K 0-3, --max-tokens 768, bench.lengths): tree-of-thought plans at most 287 tokens,
    # solutions 298, reflections 295; self-consistency solutions 311; none reached 768. 384 leaves a margin.
    max_tokens={"tree_of_thought": 384, "self_consistency_verify": 384, "game_of_24": 96},
    # Audited self-consistency verifications (GSM8K 0-79, bench.cgee_calibrate): every full-depth verdict was
    # "yes", so every gate measured skipped (nearly) all calls with none against it; the strictest is kept. It
    # gates tree-of-thought's five-way score only: the thresholded yes/no verdict is never gated (verification.py).
    gate={"top": 0.9, "margin": 0.5, "alt_top": 0.9, "rel_margin": 0.6},
    # The verdict settles early (from layer 10 of 28 every exit agreed with full depth, at layer 12-13), but
    # P(yes), which the self-consistency vote weights by, ranks right solutions above wrong ones only in the
    # last layers: over 300 verifier_check calls (GSM8K 0-99, bench.verdict_ranking) 0.835 at full depth,
    # 0.37 exiting from layer 10, 0.56 from 24, 0.805 from 25 (mean 26.3 layers run). So from layer 25.
    exit_params={"min_layer": 25},
    # The lowest similarity that kept every tree-of-thought answer on 36 calibration problems
    # (bench.merge_calibrate over rksc-merge@1.0 runs, GSM8K 0-11 and 12-35): 0.9 merged 14 of 144 branches;
    # 0.8 and 0.6 each changed one answer of 36, and live on the reporting slice 0.6 changed 3 of 6.
    merge_threshold=0.9,
    # Its verifier says "yes" to nearly everything, yet P(yes) at full depth ranks right solutions above wrong
    # ones: the threshold that maximised verdict accuracy over 300 verifier_check calls (GSM8K 0-99, a third of
    # them right): 0.697, always-"no" 0.667 (tools.cgee.threshold; tests/data/qwen-verdicts-gsm8k-0-99.json).
    verdict_threshold=0.893365,
)
PROFILES = (SMOLLM2, QWEN_CODER_1_5B)
DEFAULT = SMOLLM2


def profile_for(model_name: str | None) -> Profile:
    """The profile whose pattern the served model's name matches; the default model's otherwise."""
    for profile in PROFILES:
        if model_name and re.search(profile.pattern, model_name, re.IGNORECASE):
            return profile
    return DEFAULT
