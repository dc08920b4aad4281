"""How many drafted tokens a verify step carries: the width that maximises expected tokens per unit of cost.

A row with k drafts emits 1 + a + a^2 + ... + a^k tokens on average when each draft is accepted with
probability a (the rate seen so far for its source). A step of `rows` rows and `width` tokens per row costs
`step_cost(rows, width)`:

- `cpu`: measured on this machine as the run goes, a line in the tokens the forward computes
  (`base + per_token * rows * width`), fitted to every verify forward (starting from a prior where a
  row costs nearly a step, as on our CPUs);
- a GPU profile: the measured step table of the cost model (`runtime/cost_models/h100-7b.json`, rows x
  tokens per row), where a wider step costs little.

The width chosen is the one whose expected tokens over cost beats a plain one-token step by the most; the
batch pays for its widest row, so every row gets min(its draft, width - 1) tokens. No SGLang import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sglang_rksc.runtime.cost_model import CostModel

PRIOR_ACCEPTANCE = 0.5  # per-token acceptance before any is seen (weight PRIOR_WEIGHT drafts)
PRIOR_WEIGHT = 4.0
CPU_PRIOR = (0.3, 0.7)  # a one-token, one-row step: 0.3 fixed + 0.7 per token (a row costs nearly a step)
FIT_DECAY = 0.98  # the CPU line follows the machine's recent forwards
EXPLORE_WIDE = 8  # on the CPU, the first forwards with drafts take them all, so that the line sees wide steps


@dataclass
class Acceptance:
    """Per-token acceptance of one source: accepted drafts against drafts that stopped a row."""

    accepted: float = PRIOR_ACCEPTANCE * PRIOR_WEIGHT
    stopped: float = (1 - PRIOR_ACCEPTANCE) * PRIOR_WEIGHT

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.stopped)

    def observe(self, drafted: int, accepted: int) -> None:
        self.accepted += accepted
        self.stopped += 1 if accepted < drafted else 0


def expected_tokens(rate: float, drafts: int) -> float:
    """Tokens a row emits with `drafts` drafts each accepted with probability `rate` (the bonus included)."""
    return sum(rate**j for j in range(drafts + 1))


@dataclass
class CpuCost:
    """Seconds of a verify forward as a line in the tokens it computes, refitted as forwards are timed."""

    # decayed sums for least squares of seconds on tokens, seeded by the prior at one and four tokens
    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    unit: float | None = None  # seconds of the first one-row step: the prior's scale
    wide: int = 0  # forwards timed with more than one token per row

    def observe(self, tokens: int, seconds: float) -> None:
        if self.unit is None:
            self.unit = seconds / (CPU_PRIOR[0] + CPU_PRIOR[1] * tokens)
            for x in (1, 4):
                self._add(x, self.unit * (CPU_PRIOR[0] + CPU_PRIOR[1] * x), weight=2.0)
        self._add(tokens, seconds, 1.0)

    def observe_step(self, rows: int, width: int, seconds: float) -> None:
        self.wide += width > 1
        self.observe(rows * width, seconds)

    def _add(self, x: float, y: float, weight: float) -> None:
        d = FIT_DECAY
        self.n, self.sx, self.sy = d * self.n + weight, d * self.sx + weight * x, d * self.sy + weight * y
        self.sxx, self.sxy = d * self.sxx + weight * x * x, d * self.sxy + weight * x * y

    def line(self) -> tuple[float, float]:
        """(base, per token), relative units; the prior until a forward is timed."""
        if self.n == 0:
            return CPU_PRIOR
        var = self.sxx - self.sx * self.sx / self.n
        slope = (self.sxy - self.sx * self.sy / self.n) / var if var > 1e-9 else self.sy / max(self.sx, 1e-9)
        slope = max(slope, 1e-6)
        base = max((self.sy - slope * self.sx) / self.n, 0.0)
        return base, slope

    def step(self, rows: int, width: int) -> float:
        base, per_token = self.line()
        return base + per_token * rows * width


@dataclass
class DraftLength:
    profile: str  # "cpu" or the name of a GPU cost model
    max_drafts: int
    gpu: CostModel | None = None
    cpu: CpuCost = field(default_factory=CpuCost)
    sources: dict[str, Acceptance] = field(default_factory=dict)

    @classmethod
    def for_profile(cls, profile: str, max_drafts: int, *, on_gpu: bool) -> DraftLength:
        """`auto` follows the device; `gpu` prices steps with the shipped H100 table, also on a CPU."""
        if profile == "gpu" or (profile == "auto" and on_gpu):
            from sglang_rksc.runtime import cost_model

            return cls("gpu", max_drafts, gpu=cost_model.load())
        return cls("cpu", max_drafts)

    def step_cost(self, rows: int, width: int) -> float:
        if self.gpu is not None:
            return self.gpu.step_ms(rows, width)
        return self.cpu.step(rows, width)

    def rate(self, source: str) -> float:
        return self.sources.setdefault(source, Acceptance()).rate

    def width(self, available: list[tuple[int, str]]) -> int:
        """The tokens per row of the next verify step, for rows that have (drafted tokens, source) each."""
        rows = len(available)
        if rows == 0 or not any(n for n, _ in available):
            return 1
        rates = [self.rate(source) if n else 0.0 for n, source in available]
        longest = min(self.max_drafts, max(n for n, _ in available))
        if self.gpu is None and self.cpu.wide < EXPLORE_WIDE:
            return longest + 1
        best_width, best_gain = 1, rows / self.step_cost(rows, 1)
        for width in range(2, longest + 2):
            tokens = sum(expected_tokens(r, min(n, width - 1)) for (n, _), r in zip(available, rates, strict=True))
            gain = tokens / self.step_cost(rows, width)
            if gain > best_gain * 1.0001:
                best_width, best_gain = width, gain
        return best_width

    def observe(self, source: str, drafted: int, accepted: int) -> None:
        if drafted:
            self.sources.setdefault(source, Acceptance()).observe(drafted, accepted)

    def describe(self) -> dict:
        base, per_token = self.cpu.line()
        return {
            "profile": self.profile,
            "max_drafts": self.max_drafts,
            "acceptance": {s: round(a.rate, 4) for s, a in sorted(self.sources.items())},
            "cpu_step_line": None
            if self.gpu is not None
            else {"base": round(base, 6), "per_token": round(per_token, 6)},
        }
