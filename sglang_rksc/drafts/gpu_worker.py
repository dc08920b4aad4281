"""The GPU worker of `--rksc-drafts`: our drafts through SGLang's NGRAM verify step (its kernels, attention
backends and sampling verification). Built only where CUDA is (`gpu_worker_class`): SGLang's NGRAM module
loads GPU kernels when imported. Not run on our machines (no GPU); see docs/mechanisms/drafts.md."""

from __future__ import annotations

from functools import cache
from typing import Any

from sglang_rksc.drafts.worker import DraftWorker


class _NoCorpus:
    """NGRAM's verify step tells its corpus which requests left; the draft store learns it otherwise."""

    def erase_match_state(self, rids: Any) -> None:
        pass


@cache
def gpu_worker_class() -> type:
    from sglang.srt.speculative.ngram_worker import NGRAMWorker

    class GpuDraftWorker(DraftWorker, NGRAMWorker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            DraftWorker.__init__(self, *args, **kwargs)
            self.ngram_corpus = _NoCorpus()

        def _update_ngram_corpus(self, batch: Any) -> None:
            pass  # the store is updated when the next drafts are made

    return GpuDraftWorker
