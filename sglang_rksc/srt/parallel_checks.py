"""What each mechanism does under tensor parallelism, decided at launch.

Under `--tp-size N` SGLang runs one scheduler per rank; rank 0 receives the requests (and `/set_internal_state`
calls) and hands every rank the same ones, and every rank must then take the same decisions, or the ranks'
batches differ and their collectives hang. Each mechanism falls in one of three kinds (docs/scale-out.md):
- kept: its decisions read only what every rank holds alike (token ids, request order, marks): the radix tree,
  RSBCM (its clock readings keep the order of events, as SGLang's own LRU does), decode-side reuse, merging
  (the program decides, once);
- off, the same way on every rank, decided from the launch alone: ASKS (the cache builds no semantic feature,
  `srt.backend`), CGEE's layer exit (a vocabulary-parallel LM head: every verification runs to full depth,
  `exit.layer_exit`), batch-failure containment (`srt.batch_failures`);
- refused here, in one line, before anything starts: what runs a rank's own forward or splits heads without
  having been made rank-aware (`TP_REFUSED`).
"""

from __future__ import annotations

from collections.abc import Callable

from sglang_rksc.config import RkscConfig
from sglang_rksc.runtime.cpu import flag_value

TP_FLAGS = ("--tp-size", "--tp")
TP_REFUSED: list[tuple[str, Callable[[RkscConfig], bool], str]] = [
    (
        "--rksc-head-compression",
        lambda c: c.heads.sparsity > 0,
        "its head mask names the model's KV heads, and a rank holds only its share of them",
    ),
    ("--rksc-drafts on", lambda c: c.drafts.on, "its verify step is not run by every rank together"),
    (
        "--rksc-audit-rate",
        lambda c: c.audit.rate > 0,
        "an audit's extra forward would run on one rank while the others wait in their collectives",
    ),
    ("--rksc-packets", lambda c: c.packets, "its copy of cached KV into a prompt has not been made rank-aware"),
]


def tp_size(argv: list[str]) -> int:
    """The tensor-parallel degree the launch asks for (1 when not given)."""
    for flag in TP_FLAGS:
        value = flag_value(argv, flag)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 1  # SGLang's own parser refuses it, in its words
    return 1


def tp_refusal(settings: RkscConfig, argv: list[str]) -> str | None:
    """Why these settings cannot run under the launch's tensor parallelism (None: they can)."""
    size = tp_size(argv)
    if size <= 1:
        return None
    for flag, on, why in TP_REFUSED:
        if on(settings):
            return f"{flag} does not run with --tp-size {size}: {why}; run replicas behind a router instead"
    return None
