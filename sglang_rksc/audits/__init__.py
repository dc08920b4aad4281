"""Audits (`--rksc-audit-rate R`): what an approximate decision did to a request's next-token distributions.

For a sampled share R of generation requests the scheduler keeps, at evenly spread generated positions, the
most probable tokens of the distribution it decoded from, and appends one JSON line per finished request to
the audit log: the mechanisms that touched it (ASKS, head compression, packets; none for a control), the
prompt the client sent, the tokens generated. Nothing a client receives changes: the logits are only read.
The exact alternative is computed off the serving path, by `python -m sglang_rksc.tools.audits.replay`: the
same prompt and tokens in one full-attention forward, then the KL divergence and top-1 agreement per position.

- `recorder.py`: which requests are audited, what is kept per position, the log;
- `hooks.py`: the three scheduler seams (the batch about to run, its logits, its result).
"""
