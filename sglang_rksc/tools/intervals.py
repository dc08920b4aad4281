"""Uncertainty of answer figures: a Wilson interval for a share, a paired bootstrap for a difference of shares."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959964


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95% Wilson score interval of `successes` in `n` (sound at 0 of n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, draws: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """mean(a) - mean(b) over paired observations (the same problems), and its percentile interval from
    `draws` resamples of the problems. Seeded: the same data give the same interval."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs two equally long, non-empty samples")
    n = len(a)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    tail = (1 - level) / 2
    low, high = means[int(tail * draws)], means[min(draws - 1, int((1 - tail) * draws))]
    return sum(diffs) / n, low, high
