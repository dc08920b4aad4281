"""Frontend primitives for SGLang programs: `verify` (CGEE), its `Gate`, and `mark_branch` (RSBCM)."""

from sglang_rksc.lang.gate import Confidence, Gate, confidence_of
from sglang_rksc.lang.mark import mark_branch
from sglang_rksc.lang.verify import VerifyMethod, verify

__all__ = ["Confidence", "Gate", "VerifyMethod", "confidence_of", "mark_branch", "verify"]
