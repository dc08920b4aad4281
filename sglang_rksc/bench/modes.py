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
    program_args: tuple[str, ...] = ()  # program flags of this mode (the verification step)

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
        Mode(
            "rksc-asks",
            "semantic sharing (ASKS): dedupe at release, fork at admission",
            ("--radix-cache-backend", "rksc", "--rksc-semantic", "on"),
        ),
        Mode(
            "rksc-verify",
            "verify at full depth, no gate: CGEE's own call path without CGEE (its latency baseline)",
            ("--radix-cache-backend", "rksc"),
            program_args=("--verifier", "full"),
        ),
        Mode(
            "rksc-cgee",
            "confidence-gated verification with layer exit (CGEE)",
            ("--radix-cache-backend", "rksc"),
            program_args=("--verifier", "cgee"),
        ),
        Mode(
            "rksc-cgee-audit",
            "CGEE verdicts, each also computed at full depth: disagreement call by call",
            ("--radix-cache-backend", "rksc"),
            program_args=("--verifier", "audit"),
        ),
        Mode(
            "rksc-lfu",
            "the rksc backend with SGLang's lfu eviction (RSBCM's other baseline; `rksc` is lru)",
            ("--radix-cache-backend", "rksc", "--radix-eviction-policy", "lfu"),
        ),
        Mode(
            "rksc-evict",
            "reasoning-structure eviction (RSBCM), the programs marking rejected and finished branches",
            ("--radix-cache-backend", "rksc", "--radix-eviction-policy", "rsbcm"),
        ),
        Mode(
            "rksc-reuse",
            "deterministic duplicates answered from a finished twin (replay) or a running one (coalescing)",
            ("--radix-cache-backend", "rksc", "--rksc-reuse", "on"),
        ),
        Mode(
            "rksc-merge",
            "merging of near-duplicate branches",
            pending="not implemented yet (decode-side sharing, issue 8)",
        ),
        Mode(
            "rksc-full",
            "every RKSC feature landed so far: ASKS, CGEE, RSBCM with marks, reuse (merging: not yet)",
            (
                "--radix-cache-backend",
                "rksc",
                "--rksc-semantic",
                "on",
                "--radix-eviction-policy",
                "rsbcm",
                "--rksc-reuse",
                "on",
            ),
            program_args=("--verifier", "cgee"),
        ),
    )
}
REFERENCE = "radix"
DEFAULT_MODES = ("no-cache", "radix", "rksc")


def _with_thresholds(mode: Mode, spec: str) -> Mode:
    """`rksc-asks@0.9` (hidden-state threshold) or `rksc-asks@0.9/0.95` (and probe threshold)."""
    parts = spec.split("/")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"mode {mode.name}@{spec}: thresholds must be numbers") from None
    if len(values) > 2 or not all(-1.0 <= v <= 1.0 for v in values):
        raise ValueError(f"mode {mode.name}@{spec}: give one or two cosines in [-1, 1]")
    args = [*mode.server_args, "--rksc-threshold", parts[0]]
    if len(values) == 2:
        args += ["--rksc-probe-threshold", parts[1]]
    return Mode(
        f"{mode.name}@{spec}", f"{mode.description}, thresholds {spec}", tuple(args), mode.pending, mode.program_args
    )


def resolve(names: list[str]) -> list[Mode]:
    """Modes by name, in the order given; `name@t[/p]` sets ASKS thresholds. Unknown names raise ValueError."""
    base = [n.split("@", 1)[0] for n in names]
    unknown = [n for n in base if n not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a mode is named twice in {', '.join(names)}")
    modes = []
    for name, root in zip(names, base, strict=True):
        mode = MODES[root]
        if "@" in name:
            if "--rksc-semantic" not in mode.server_args:
                raise ValueError(f"mode {root} takes no thresholds")
            mode = _with_thresholds(mode, name.split("@", 1)[1])
        modes.append(mode)
    return modes
