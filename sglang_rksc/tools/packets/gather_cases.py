"""The gather case that the packet benchmark and the adapter's training share: a GSM8K question, several
solutions each opened with its own phrase (so that they differ), then a prompt that gathers them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sglang_rksc.programs.common import BRANCH_OPENINGS
from sglang_rksc.programs.gsm8k import Problem
from sglang_rksc.programs.self_consistency_verify import SOLVE_PROMPT


@dataclass(frozen=True)
class CasePrompts:
    prefix: str  # the shared question: a user turn
    openings: list[str]  # each solution's prompt: the prefix, the assistant's turn and its opening phrase


def case_prompts(problem: Problem, template: Any, samples: int) -> CasePrompts:
    user, user_end = template.get_prefix_and_suffix("user", [])
    assistant, _ = template.get_prefix_and_suffix("assistant", [])
    prefix = user + SOLVE_PROMPT.format(question=problem.question) + user_end
    openings = [prefix + assistant + BRANCH_OPENINGS[i % len(BRANCH_OPENINGS)] for i in range(samples)]
    return CasePrompts(prefix, openings)
