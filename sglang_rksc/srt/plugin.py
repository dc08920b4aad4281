"""Entry point of SGLang's `sglang.srt.plugins` group.

SGLang calls `register()` in the launcher and in every child process (the scheduler among them) before it
builds the tree cache, so the `rksc` backend is known wherever `--radix-cache-backend rksc` is checked. What it
attaches, and where, is the seam table (`seams`): checked first, then installed for this process's settings.
Keep this module cheap to import: it is loaded in every SGLang process.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_installed = False


def register() -> None:
    """Check the seams against the installed SGLang, then install them (idempotent). A seam that moved stops
    the process with one line (SGLang's plugin loader would only log an exception and go on without us)."""
    from sglang_rksc.config import ConfigError, RkscConfig
    from sglang_rksc.srt import seams

    global _installed
    if _installed:
        return
    try:
        seams.check()
    except seams.SeamError as exc:
        raise SystemExit(f"sglang-rksc: {exc} (set SGLANG_PLUGINS to load SGLang without sglang-rksc)") from None
    try:
        config = RkscConfig.current()
    except ConfigError:
        config = RkscConfig()  # reported where the settings are used (the tree-cache factory), in one line
    seams.install(config)
    _installed = True
