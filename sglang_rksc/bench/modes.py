"""The modes the benchmark compares: how the server is launched for each.

A mode whose feature has not landed yet stays listed with the issue that
brings it, so a table can say so instead of silently leaving it out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    server_args: tuple[str, ...] = ()
    pending: str | None = None  # why it cannot run yet

    @property
    def available(self) -> bool:
        return self.pending is None


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(
            "no-cache",
            "SGLang with its radix cache disabled",
            ("--radix-cache-backend", "default", "--disable-radix-cache"),
        ),
        Mode(
            "radix",
            "stock SGLang radix cache (its default selection: UnifiedRadixCache)",
            ("--radix-cache-backend", "default"),
        ),
        Mode(
            "rksc",
            "the rksc backend with every RKSC feature off (the plugin's own cost)",
            ("--radix-cache-backend", "rksc"),
        ),
        Mode("rksc-asks", "semantic prefix sharing (ASKS)", pending="not implemented yet (ASKS, issue 4)"),
        Mode(
            "rksc-cgee",
            "confidence-gated verification with layer exit (CGEE)",
            pending="not implemented yet (CGEE, issue 5)",
        ),
        Mode("rksc-evict", "reasoning-structure eviction (RSBCM)", pending="not implemented yet (RSBCM, issue 6)"),
        Mode(
            "rksc-reuse",
            "coalescing and replay of deterministic duplicates",
            pending="not implemented yet (decode-side sharing, issue 8)",
        ),
        Mode(
            "rksc-merge",
            "merging of near-duplicate branches",
            pending="not implemented yet (decode-side sharing, issue 8)",
        ),
        Mode("rksc-full", "every RKSC feature together", pending="not implemented yet (issues 4, 5, 6, 8)"),
    )
}
REFERENCE = "radix"
DEFAULT_MODES = ("no-cache", "radix", "rksc")


def resolve(names: list[str]) -> list[Mode]:
    """Modes by name, in the order given; unknown names raise ValueError listing the known ones."""
    unknown = [n for n in names if n not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a mode is named twice in {', '.join(names)}")
    return [MODES[n] for n in names]
