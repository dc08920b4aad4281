"""Decode-side sharing: lossless reuse of deterministic results (replay, coalescing, verdicts)."""
