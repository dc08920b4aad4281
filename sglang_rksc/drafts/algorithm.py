"""`RKSC_DRAFTS`: our speculative algorithm, registered through `SpeculativeAlgorithm.register`.

It runs on SGLang's NGRAM schema (a verify input with a tree mask, no draft model and no draft KV), so it says
`is_ngram()`: every scheduler branch written for NGRAM (its KV sizing, its relay, no draft worker) is the
right one for it. Its worker (`worker.DraftWorker`) drafts from the draft store instead of NGRAM's corpus.
The launcher turns `--rksc-drafts on` into `--speculative-algorithm RKSC_DRAFTS` and its widths.
"""

from __future__ import annotations

from typing import Any

from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_registry import CustomSpecAlgo


class DraftAlgorithm(CustomSpecAlgo):
    def is_ngram(self) -> bool:
        return True

    def has_draft_kv(self) -> bool:
        return False

    def need_topk(self) -> bool:
        return False

    def carries_draft_hidden_states(self) -> bool:
        return False

    def get_platform_worker_cls(self) -> type | None:
        return None

    def create_future_map(self, *args: Any, **kwargs: Any) -> Any:
        return SpeculativeAlgorithm.create_future_map(self, *args, **kwargs)

    def handle_server_args(self, server_args: Any) -> None:
        """Chains of one branch, run synchronously (the worker reads each request's committed tokens)."""
        from sglang.srt.arg_groups.overrides import declare_resolution, resolving_view

        cfg = resolving_view(server_args)
        width = cfg.speculative_num_draft_tokens
        if width is None:
            from sglang_rksc.config import RkscConfig

            width = RkscConfig.current().drafts.max_tokens + 1
        declare_resolution(
            server_args,
            "rksc_drafts",
            disable_overlap_schedule=True,
            enable_mixed_chunk=False,
            speculative_eagle_topk=1,
            speculative_num_draft_tokens=width,
            speculative_num_steps=width - 1,
        )

    def create_worker(self, server_args: Any) -> type:
        return worker_factory(server_args)


def worker_factory(server_args: Any) -> type:
    """The CPU worker, or on a GPU the one with SGLang's NGRAM verify step."""
    import torch

    if torch.cuda.is_available() and getattr(server_args, "device", "cuda") != "cpu":
        from sglang_rksc.drafts.gpu_worker import gpu_worker_class

        return gpu_worker_class()
    from sglang_rksc.drafts.worker import DraftWorker

    return DraftWorker
