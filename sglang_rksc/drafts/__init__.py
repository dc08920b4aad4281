"""Drafts: several tokens per decode step, drafted from the program's own branches and checked in one forward.

`store` (where drafts come from), `length` (how many a step carries), `worker` (the verify step), `algorithm`
(its registration as SGLang's speculative algorithm `RKSC_DRAFTS`), `attention` (verify attention on the
CPU path), `stats` (counters), `hooks` (small SGLang hooks and the launch check). See docs/drafts.md.
"""

ALGORITHM_NAME = "RKSC_DRAFTS"  # --speculative-algorithm, as SGLang's registry knows it
