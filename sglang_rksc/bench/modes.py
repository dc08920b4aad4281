"""The modes the benchmark compares: how the server is launched for each, and the program flags
that go with it (the verification step, merging)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    server_args: tuple[str, ...] = ()
    program_args: tuple[str, ...] = ()  # program flags of this mode (the verification step, merging)


# Similarity at which the programs merge branches in rksc-merge and rksc-full: the served model's profile
# (`programs.model_profiles`: SmolLM2 0.8, the lowest that kept 90% of tree-of-thought answers in
# `bench.merge_calibrate` on GSM8K 0-23; Qwen2.5-Coder-1.5B 0.9, the lowest that kept all of them on GSM8K 0-35;
# see the README). `rksc-merge@T` sets another.
MERGE_THRESHOLD = "auto"
MERGE_FLAG = "--merge-branches"


def _merge_description(threshold: float | str) -> str:
    similarity = (
        "the model's calibrated similarity; none in self-consistency"
        if threshold == "auto"
        else f"similarity {threshold}"
    )
    return f"near-duplicate branches merged in the frontend ({similarity}), by the server's span embeddings"


HEADS_FLAG = "--rksc-head-compression"
PACKETS_FLAGS = ("--rksc-packets", "on")
# rksc-full, the default set: every mechanism but head compression and packets, whose prices in answers on the
# quality model are beyond the 2-point aim (head compression: 7 of 20 self-consistency answers against radix's
# drift of 4; packets: 7 of 28 gather answers against the same gather in full; docs/answer-costs.md). Both stay
# opt-in (`rksc-heads`, `rksc-packets`, and `rksc-full+heads`, which turns on every mechanism). ASKS's
# zero-forward probe is off too, and named so: journals written while it was on by default record those rows
# under `+probe` modes, and a resume must not mix the two under one name (docs/mechanisms/asks.md).
PROBE_FLAG = "--rksc-probe"
ASKS_SERVER_ARGS = ("--radix-cache-backend", "rksc", "--rksc-semantic", "on", PROBE_FLAG, "off")
FULL_SERVER_ARGS = (
    *ASKS_SERVER_ARGS, "--radix-eviction-policy", "rsbcm", "--rksc-reuse", "on", "--rksc-span-embeddings", "on",
)  # fmt: skip
FULL_PROGRAM_ARGS = ("--verifier", "cgee", "--merge-branches", MERGE_THRESHOLD)

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
            "radix-rerun",
            "radix again, a run of its own: radix's drift between runs, the noise an answer change is judged against",
            ("--radix-cache-backend", "default"),
        ),
        Mode(
            "rksc",
            "the rksc backend with every RKSC feature off (the plugin's own cost)",
            ("--radix-cache-backend", "rksc"),
        ),
        Mode(
            "rksc-asks",
            "semantic sharing (ASKS): dedupe at release, fork at admission onto deduplicated spans",
            ASKS_SERVER_ARGS,
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
            _merge_description(MERGE_THRESHOLD),
            ("--radix-cache-backend", "rksc", "--rksc-span-embeddings", "on"),
            program_args=("--merge-branches", MERGE_THRESHOLD),
        ),
        Mode(
            "rksc-heads",
            "RLKV head compression at sparsity 0.4 (sink 16 + window 64); `rksc-heads@S[/POOL][/wWINDOW][/rSEED]` "
            "sets them (rSEED: a random mask of that size)",
            ("--radix-cache-backend", "rksc", "--rksc-head-compression", "0.4"),
        ),
        Mode(
            "rksc-packets",
            "KV packets for the gather step: each problem's gather prompt asked with packets, then in full "
            "(the programs' --aggregate usc --packets both), so the two answers are paired",
            ("--radix-cache-backend", "rksc", "--rksc-packets", "on"),
            program_args=("--aggregate", "usc", "--packets", "both"),
        ),
        Mode(
            "rksc-full",
            "the default set (the mechanisms whose answer price is within radix's drift, docs/answer-costs.md): "
            "ASKS without its probe, CGEE, RSBCM with marks, reuse, merging (not of self-consistency's finished "
            "solutions, where it would save only their verification)",
            FULL_SERVER_ARGS,
            program_args=FULL_PROGRAM_ARGS,
        ),
        Mode(
            "rksc-full+heads",
            "every mechanism: rksc-full plus packets and RLKV head compression at 0.4 (window 64), rksc-full as it "
            "was until the two left the default set for their price in answers on the quality model",
            (*FULL_SERVER_ARGS, *PACKETS_FLAGS, HEADS_FLAG, "0.4"),
            program_args=FULL_PROGRAM_ARGS,
        ),
    )
}
DRAFTS_FLAGS = ("--rksc-drafts", "on")


def _with_probe(args: tuple[str, ...]) -> tuple[str, ...]:
    """`args` with ASKS's zero-forward probe turned on."""
    i = args.index(PROBE_FLAG)
    return (*args[: i + 1], "on", *args[i + 2 :])


def without_flag(args: tuple[str, ...], flag: str) -> tuple[str, ...]:
    """`args` less `flag` and its value."""
    if flag not in args:
        return args
    i = args.index(flag)
    return args[:i] + args[i + 2 :]


def _with_drafts(name: str, mode: Mode, description: str) -> Mode:
    """`mode` plus drafts (`--rksc-drafts on`), less head compression, which drafts are refused with at launch."""
    return Mode(name, description, (*without_flag(mode.server_args, HEADS_FLAG), *DRAFTS_FLAGS), mode.program_args)


MODES.update(
    (m.name, m)
    for m in (
        _with_drafts(
            "radix+drafts",
            MODES["radix"],
            "stock radix cache plus drafts (speculative decoding from the program's own branches)",
        ),
        _with_drafts(
            "rksc-full+drafts",
            MODES["rksc-full"],
            "rksc-full plus drafts (speculative decoding from the program's own branches): ASKS without its "
            "probe, CGEE, RSBCM with marks, reuse, merging, drafts",
        ),
        Mode(
            "rksc-asks+probe",
            "ASKS with its zero-forward probe: also forks unseen spans by their input embeddings at admission",
            _with_probe(MODES["rksc-asks"].server_args),
        ),
        Mode(
            "rksc-full+probe",
            "rksc-full with ASKS's zero-forward probe, the default set until the probe answered one GSM8K problem "
            "with another's solutions",
            _with_probe(MODES["rksc-full"].server_args),
            MODES["rksc-full"].program_args,
        ),
    )
)
REFERENCE = "radix"
DEFAULT_MODES = ("no-cache", "radix", "rksc")


def _number(mode: Mode, spec: str, what: str) -> float:
    """The number after `@` in a mode's name."""
    try:
        return float(spec)
    except ValueError:
        raise ValueError(f"mode {mode.name}@{spec}: {what} must be a number") from None


def _with_merge_threshold(mode: Mode, spec: str) -> Mode:
    """`rksc-merge@0.9`, `rksc-full@0.9`: the programs merge branches at this similarity, self-consistency's
    finished solutions too (which `auto` leaves alone)."""
    value = _number(mode, spec, "the merge threshold")
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"mode {mode.name}@{spec}: the merge threshold must be a similarity in [-1, 1]")
    args = list(mode.program_args)
    args[args.index(MERGE_FLAG) + 1] = spec
    description = (
        _merge_description(spec)
        if mode.name == "rksc-merge"
        else f"{mode.description}; merging at similarity {spec} in every program, self-consistency included"
    )
    return Mode(f"{mode.name}@{spec}", description, mode.server_args, tuple(args))


def _with_sparsity(mode: Mode, spec: str) -> Mode:
    """`rksc-heads@0.6`: that share of the KV heads compressed; then, after `/`, a window pool (window
    slots per token slot, `rksc-heads@0.6/0.5`), a window (`rksc-heads@0.4/w256`) and/or a random mask of
    that size instead of the calibrated one (`rksc-heads@0.4/r0`, the seed)."""
    sparsity, *extras = spec.split("/")
    value = _number(mode, sparsity, "the sparsity")
    if not 0.0 < value <= 0.95:
        raise ValueError(f"mode {mode.name}@{spec}: the sparsity must be in (0, 0.95]")
    args = list(mode.server_args)
    args[args.index("--rksc-head-compression") + 1] = sparsity
    description = f"RLKV head compression at sparsity {sparsity}"
    for extra in extras:
        if extra.startswith("r"):
            seed = _number(mode, extra[1:], "the random mask's seed")
            if seed != int(seed) or seed < 0:
                raise ValueError(f"mode {mode.name}@{spec}: the random mask's seed must be a whole number >= 0")
            args += ["--rksc-head-mask", f"random:{int(seed)}"]
            description += f", random mask (seed {int(seed)})"
        elif extra.startswith("w"):
            window = _number(mode, extra[1:], "the window")
            if window < 1 or window != int(window):
                raise ValueError(f"mode {mode.name}@{spec}: the window must be a whole number of tokens >= 1")
            args += ["--rksc-window", str(int(window))]
            description += f", window {int(window)}"
        else:
            if not 0.0 < _number(mode, extra, "the window pool") <= 1.0:
                raise ValueError(f"mode {mode.name}@{spec}: the window pool must be in (0, 1]")
            args += ["--rksc-window-pool", extra]
            description += f", window pool {extra}"
    return Mode(f"{mode.name}@{spec}", description, tuple(args), mode.program_args)


def _with_thresholds(mode: Mode, spec: str) -> Mode:
    """`rksc-asks@0.9` (hidden-state threshold) or `rksc-asks@0.9/0.95` (and the probe, on at that threshold)."""
    parts = spec.split("/")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"mode {mode.name}@{spec}: thresholds must be numbers") from None
    if len(values) > 2 or not all(-1.0 <= v <= 1.0 for v in values):
        raise ValueError(f"mode {mode.name}@{spec}: give one or two cosines in [-1, 1]")
    args = [*mode.server_args, "--rksc-threshold", parts[0]]
    if len(values) == 2:
        args = [*_with_probe(tuple(args)), "--rksc-probe-threshold", parts[1]]
    return Mode(f"{mode.name}@{spec}", f"{mode.description}, thresholds {spec}", tuple(args), mode.program_args)


def resolve(names: list[str]) -> list[Mode]:
    """Modes by name, in the order given; `rksc-asks@t[/p]` sets ASKS thresholds, `rksc-merge@t` (and any mode
    that merges: `rksc-full@t`) the merge threshold, `rksc-heads@s` the head-compression sparsity. Unknown names
    raise ValueError."""
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
            spec = name.split("@", 1)[1]
            if MERGE_FLAG in mode.program_args:
                mode = _with_merge_threshold(mode, spec)
            elif root == "rksc-heads":
                mode = _with_sparsity(mode, spec)
            elif "--rksc-semantic" in mode.server_args and MERGE_FLAG not in mode.program_args:
                mode = _with_thresholds(mode, spec)
            else:
                raise ValueError(f"mode {root} takes no thresholds")
        modes.append(mode)
    return modes
