"""How packets enter SGLang: registered only in a server launched with `--rksc-packets on`.

- queueing: a request's packet texts are tokenised once, when the scheduler queues it, and with an adapter
  loaded its packets are wrapped in soft tokens (`soft_tokens`);
- the prefill batch: after `prepare_for_extend`, the tree cache's `PacketReuse` plans the copies of found
  packets and takes their positions out of the forward; the copies run when the forward batch is built;
- the forward: its positions are the computed ones, and the extend attention reads the copied positions from
  the cache (`attention`): torch-native's, and on a GPU also the Triton backend's, through our Triton kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from sglang_rksc.cache.feature import feature_of
from sglang_rksc.packets import attention
from sglang_rksc.packets.adapter import placeholder_id
from sglang_rksc.packets.reuse import PACKETS_ATTR, QUERY_ATTR, PacketReuse
from sglang_rksc.wire import Option, request_options

_TARGETS = {
    "queue": "sglang.srt.managers.scheduler.Scheduler._add_request_to_queue",
    "prepare": "sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_extend",
    "forward_batch": "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new",
    "attention": "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend",
    "triton_attention": "sglang.srt.layers.attention.triton_backend.TritonAttnBackend.forward_extend",
}
_registered = False


def tokenise_packets(result: Any, scheduler: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER hook on `Scheduler._add_request_to_queue`."""
    texts = request_options(req).get(Option.PACKETS)
    tokenizer = getattr(scheduler, "tokenizer", None)
    if texts and tokenizer is not None and getattr(req, PACKETS_ATTR, None) is None:
        setattr(req, PACKETS_ATTR, [tuple(tokenizer.encode(t, add_special_tokens=False)) for t in texts])
        reuse = feature_of(getattr(scheduler, "tree_cache", None), PacketReuse.name)
        if reuse is not None:
            reuse.wrap_request(req, placeholder_id(tokenizer), scheduler.model_config.context_len)
    return result


def copy_packets(result: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AFTER hook on `ScheduleBatch.prepare_for_extend`."""
    reuse = feature_of(batch.tree_cache, PacketReuse.name)
    if reuse is not None and batch.forward_mode.is_extend() and not batch.forward_mode.is_dllm_extend():
        reuse.prepare(batch)
    return result


def computed_positions(original: Any, cls: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `ForwardBatch.init_new`: the batch's planned packet copies run (on the forward's stream,
    see `reuse`), and a batch that copied packets gets the positions it computes."""
    reuse = feature_of(getattr(batch, "tree_cache", None), PacketReuse.name)
    if reuse is not None:
        reuse.run_copies(batch)
    fb = original(cls, batch, *args, **kwargs)
    info = getattr(fb, "sampling_info", None)
    if info is None:
        return fb
    # The runners copy a ForwardBatch field by field (our attribute would be lost); its sampling info is
    # carried by reference. Set on every forward, so that no stale value reaches a later one.
    setattr(info, QUERY_ATTR, None)
    setattr(info, attention.LAYOUT_ATTR, None)
    computed = getattr(batch, QUERY_ATTR, None)  # set by `copy_packets` on this prefill's batch only
    if not computed or not fb.forward_mode.is_extend():
        return fb
    per_row = [computed.get(row) for row in range(len(batch.reqs))]
    pieces = [
        p if p is not None else torch.arange(batch.prefix_lens[row], batch.prefix_lens[row] + batch.extend_lens[row])
        for row, p in enumerate(per_row)
    ]
    fb.positions = torch.cat(pieces).to(device=fb.positions.device, dtype=fb.positions.dtype)
    setattr(info, QUERY_ATTR, per_row)
    return fb


def register() -> None:
    """Install the hooks (idempotent)."""
    global _registered
    if _registered:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(_TARGETS["queue"], tokenise_packets, HookType.AFTER)
    HookRegistry.register(_TARGETS["prepare"], copy_packets, HookType.AFTER)
    HookRegistry.register(_TARGETS["forward_batch"], computed_positions, HookType.AROUND)
    HookRegistry.register(_TARGETS["attention"], attention.forward_extend, HookType.AROUND)
    if torch.cuda.is_available():  # SGLang's Triton backend runs on GPUs only
        HookRegistry.register(_TARGETS["triton_attention"], attention.forward_extend, HookType.AROUND)
    _registered = True
