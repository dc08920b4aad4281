"""Frontend primitives for SGLang programs: `verify` (CGEE), its `Gate`, `mark_branch` (RSBCM) and
`merge_branches` (near-duplicate branches), `gather` (a prompt over earlier branches, their KV reused as packets)
and `put_packets` (standalone packets: texts computed once at position 0 for later prompts to reuse)."""

from sglang_rksc.lang.gate import Confidence, Gate, confidence_of
from sglang_rksc.lang.gather import GatherPrompt, GatherResult, gather, gather_prompt, put_packets
from sglang_rksc.lang.mark import mark_branch
from sglang_rksc.lang.merge import BranchGroups, merge_branches
from sglang_rksc.lang.verify import VerifyMethod, verify

__all__ = [
    "BranchGroups",
    "Confidence",
    "Gate",
    "GatherPrompt",
    "GatherResult",
    "VerifyMethod",
    "confidence_of",
    "gather",
    "gather_prompt",
    "mark_branch",
    "merge_branches",
    "put_packets",
    "verify",
]
