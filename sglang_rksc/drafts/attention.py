"""Torch-native attention for SGLang's `TARGET_VERIFY` forward (it has none), on the CPU path.

A verify step of width w is, per request, an extend of w tokens on top of its committed KV: the last token
and its drafts sit at positions `seq_len .. seq_len + w - 1` and see the committed prefix and, causally, each
other. That is SGLang's own torch-native extend with the prefix lengths set to the committed lengths, so the
hook hands it a view of the forward batch that says so.
"""

from __future__ import annotations

from typing import Any

import torch

VIEW_ATTR = "rksc_verify_view"  # on the forward batch: its extend view, built at the first layer


class _VerifyView:
    """The forward batch, read as an extend of `width` tokens after each committed length."""

    def __init__(self, forward_batch: Any) -> None:
        self._batch = forward_batch
        width = forward_batch.spec_info.draft_token_num
        committed = forward_batch.seq_lens
        self.extend_prefix_lens = committed
        self.extend_seq_lens = torch.full_like(committed, width)
        self.seq_lens = committed + width

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)


def verify_view(forward_batch: Any) -> Any:
    view = getattr(forward_batch, VIEW_ATTR, None)
    if view is None:
        view = _VerifyView(forward_batch)
        setattr(forward_batch, VIEW_ATTR, view)
    return view


def forward_extend(
    original: Any, backend: Any, q: Any, k: Any, v: Any, layer: Any, forward_batch: Any, *args: Any, **kwargs: Any
) -> Any:
    """AROUND hook on `TorchNativeAttnBackend.forward_extend`."""
    if forward_batch.forward_mode.is_target_verify():
        forward_batch = verify_view(forward_batch)
    return original(backend, q, k, v, layer, forward_batch, *args, **kwargs)
