"""Frontend primitives for SGLang programs: `verify` (CGEE) and its `Gate`."""

from sglang_rksc.lang.gate import Confidence, Gate, confidence_of
from sglang_rksc.lang.verify import VerifyMethod, verify

__all__ = ["Confidence", "Gate", "VerifyMethod", "confidence_of", "verify"]
