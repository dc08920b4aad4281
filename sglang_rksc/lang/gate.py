"""The confidence gate of CGEE: skip a verification when the candidate was generated confidently.

The confidence comes from the candidate's own generation: per generated token, the
probability of the top-1 token and its margin over the top-2 (SGLang returns them
with `return_logprob=True, top_logprobs_num=2`), averaged over the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Confidence:
    top: float  # mean top-1 probability
    margin: float  # mean (top-1 - top-2) probability
    tokens: int

    @property
    def relative_margin(self) -> float:
        return self.margin / self.top if self.top > 0 else 0.0


@dataclass(frozen=True)
class Gate:
    """Skip when top >= `top` and margin >= `margin`, or top >= `alt_top` and margin/top >= `rel_margin`.

    The defaults are RKSC's starting points; tune them per model on the calibration split.
    """

    top: float = 0.70
    margin: float = 0.06
    alt_top: float = 0.63
    rel_margin: float = 0.08

    def __post_init__(self) -> None:
        for name in ("top", "margin", "alt_top", "rel_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"gate.{name} must be a probability in [0, 1], got {value!r}")

    def skips(self, confidence: Confidence) -> bool:
        c = confidence
        return (c.top >= self.top and c.margin >= self.margin) or (
            c.top >= self.alt_top and c.relative_margin >= self.rel_margin
        )


def confidence_of(top_logprobs: Sequence[Sequence[Any]] | None) -> Confidence | None:
    """From SGLang's `output_top_logprobs` (per token: [(logprob, token_id, text), ...], best first).

    None when there is nothing to judge by (no tokens, or fewer than two alternatives).
    """
    if not top_logprobs:
        return None
    tops, margins = [], []
    for alternatives in top_logprobs:
        if not alternatives or len(alternatives) < 2:
            return None
        first, second = (math.exp(float(a[0])) for a in alternatives[:2])
        tops.append(first)
        margins.append(first - second)
    return Confidence(top=sum(tops) / len(tops), margin=sum(margins) / len(margins), tokens=len(tops))
