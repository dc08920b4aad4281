"""The head-split KV pool: full heads in the per-token slots, compressed heads in a smaller window pool.

A token slot (SGLang's index, from its allocator) stores the K and V of the full heads of every layer.
The compressed heads' K and V live in window slots, which only sinks and the recent window of a
sequence hold: `window_slot[token slot]` is the token's window slot, 0 when it has none (dropped, or
never kept). Window slots are taken by `windows` as sequences grow and given back when their token
leaves every window that needs it, or when its token slot is freed. The attention backend
(`attention`) reads both halves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import torch
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, unwrap_write_loc

from sglang_rksc.rlkv.layout import HeadLayout


class WindowPoolExhausted(RuntimeError):
    pass


class HeadSplitKVPool(MHATokenToKVPool):
    """`MHATokenToKVPool` whose per-layer buffers hold only the full heads, plus the window pool.

    SGLang's configurator builds it with the in-tree keyword arguments, from the class the platform's
    `get_kv_pool_cls` returns: `configured(layout, window_fraction)`, which hands both to this constructor.
    The pool also keeps the per-request facts the window bookkeeping needs (`branch_points`, `window_floors`),
    keyed by the request object, so that nothing of ours hangs on SGLang's `Req`."""

    def __init__(self, size: int, page_size: int, *args, layout: HeadLayout, window_fraction: float, **kwargs) -> None:
        if page_size != 1:
            raise ValueError("head compression needs --page-size 1")
        if kwargs.get("quant_method") is not None:
            raise ValueError("head compression does not support a quantized KV cache")
        self.layout = layout
        self.window_fraction = window_fraction  # window slots per token slot
        self.window_size = max(1, int(size * window_fraction))
        smallest = 2 * layout.per_request_bound  # two requests' sinks, windows and new tokens
        if self.window_size < smallest:
            raise ValueError(
                f"the window pool would hold {self.window_size} slots, fewer than {smallest} (two requests): "
                "raise --rksc-window-pool or --max-total-tokens, or lower --rksc-window"
            )
        self.admissions_deferred = 0  # prefill admissions stopped because the window pool was short
        self.decode_shortfalls = 0  # decode steps that retracted because the window pool was short
        self.interior_windows_dropped = 0  # window slots given back by cached interior nodes (`tree_windows`)
        # Where a request's match was cut back to a complete window, the position it first matched to (the
        # recomputation keeps a window there, `HeadLayout.kept`); and how far its own windows have slid.
        self.branch_points: WeakKeyDictionary[Any, int] = WeakKeyDictionary()
        self.window_floors: WeakKeyDictionary[Any, int] = WeakKeyDictionary()
        self.reserved_by_round: WeakKeyDictionary[Any, int] = WeakKeyDictionary()  # PrefillAdder -> slots
        super().__init__(size, page_size, *args, **kwargs)

    @classmethod
    def configured(cls, layout: HeadLayout, window_fraction: float) -> type[HeadSplitKVPool]:
        """The pool class SGLang builds (it takes a class and its own arguments): ours, with this layout."""

        class ConfiguredHeadSplitKVPool(cls):
            def __init__(self, size: int, page_size: int, *args, **kwargs) -> None:
                super().__init__(size, page_size, *args, layout=layout, window_fraction=window_fraction, **kwargs)

        return ConfiguredHeadSplitKVPool

    def _create_buffers(self) -> None:
        layout = self.layout
        if (layout.num_layers, layout.num_kv_heads) != (self.layer_num, self.head_num):
            raise ValueError(
                f"head mask is for {layout.num_layers} layers x {layout.num_kv_heads} KV heads, "
                f"the model has {self.layer_num} x {self.head_num}"
            )
        rows = self.size + self.page_size

        def zeros(n: int, heads: int, dim: int) -> torch.Tensor:
            return torch.zeros((n, heads, dim), dtype=self.store_dtype, device=self.device)

        layers = range(self.start_layer, self.start_layer + self.layer_num)
        self.full_heads = [torch.tensor(layout.full_heads(i), dtype=torch.long) for i in layers]
        self.window_heads = [torch.tensor(layout.compressed_heads(i), dtype=torch.long) for i in layers]
        self.k_buffer = [zeros(rows, len(h), self.head_dim) for h in self.full_heads]
        self.v_buffer = [zeros(rows, len(h), self.v_head_dim) for h in self.full_heads]
        self.window_k = [zeros(self.window_size + 1, len(h), self.head_dim) for h in self.window_heads]
        self.window_v = [zeros(self.window_size + 1, len(h), self.v_head_dim) for h in self.window_heads]
        self.window_slot = torch.zeros(rows, dtype=torch.long, device=self.device)
        self._free_windows = torch.arange(1, self.window_size + 1, dtype=torch.long, device=self.device)
        self.k_scale_buffer = self.v_scale_buffer = None
        self.dq_k_buffer = self.dq_v_buffer = None
        self._kv_buffer_descs = None  # per-layer shapes differ; only PD transfer and CUDA VMM read these
        self._init_data_ptrs_and_strides()

    # ---------------------------------------------------------------- window slots

    @property
    def free_window_slots(self) -> int:
        return int(self._free_windows.numel())

    @property
    def used_window_slots(self) -> int:
        return self.window_size - self.free_window_slots

    def keep_windows(self, token_slots: torch.Tensor) -> None:
        """Give each token slot without one a window slot (its compressed heads' K and V are kept)."""
        missing = token_slots[self.window_slot[token_slots] == 0].unique()
        if missing.numel() == 0:
            return
        if missing.numel() > self._free_windows.numel():
            raise WindowPoolExhausted(
                f"the window pool has {self._free_windows.numel()} free slots, {missing.numel()} needed"
            )
        self.window_slot[missing] = self._free_windows[: missing.numel()]
        self._free_windows = self._free_windows[missing.numel() :]

    def drop_windows(self, token_slots: torch.Tensor) -> None:
        """Give back the window slots of these token slots (their compressed heads' KV is dropped)."""
        slots = self.window_slot[token_slots]
        held = slots[slots > 0].unique()
        if held.numel() == 0:
            return
        self.window_slot[token_slots] = 0
        self._free_windows = torch.cat((self._free_windows, held))
        assert self._free_windows.numel() <= self.window_size, "a window slot was freed twice"

    def detach_windows(self, token_slots: torch.Tensor) -> torch.Tensor:
        """Take these tokens' window slots off them without freeing them (0 where none); `attach_windows`
        gives each to a token slot again or back to the free list."""
        held = self.window_slot[token_slots].clone()
        self.window_slot[token_slots] = 0
        return held

    def attach_windows(self, token_slots: torch.Tensor, held: torch.Tensor) -> None:
        """Give token slots the detached window slots `held` (same order); a token that has one already,
        or a duplicate, keeps its own and the detached one is freed."""
        assert token_slots.shape == held.shape, (token_slots.shape, held.shape)
        unique_slots, first = _first_occurrence(token_slots)
        carried = held[first]
        take = (carried > 0) & (self.window_slot[unique_slots] == 0)
        self.window_slot[unique_slots[take]] = carried[take]
        used = torch.zeros(held.shape[0], dtype=torch.bool)
        used[first[take]] = True
        spare = held[(held > 0) & ~used]
        self._free_windows = torch.cat((self._free_windows, spare))
        assert self._free_windows.numel() <= self.window_size, "a window slot was freed twice"

    def reset_windows(self) -> None:
        """Every window slot free (the allocator was cleared: no token slot is held)."""
        self.window_slot.zero_()
        self._free_windows = torch.arange(1, self.window_size + 1, dtype=torch.long, device=self.device)

    def has_window(self, token_slots: torch.Tensor) -> torch.Tensor:
        return self.window_slot[token_slots] > 0

    # ---------------------------------------------------------------- KV access

    def set_kv_buffer(
        self, layer, loc_info, cache_k, cache_v, k_scale=None, v_scale=None, layer_id_override=None, dcp_kv_mask=None
    ):
        loc, _, _ = unwrap_write_loc(loc_info)
        layer_id = layer_id_override if layer_id_override is not None else layer.layer_id
        i = layer_id - self.start_layer
        if cache_k.dtype != self.dtype:
            cache_k, cache_v = cache_k.to(self.dtype), cache_v.to(self.dtype)
        cache_k = cache_k.view(-1, self.head_num, self.head_dim)
        cache_v = cache_v.view(-1, self.head_num, self.v_head_dim)
        self.k_buffer[i][loc] = cache_k[:, self.full_heads[i]]
        self.v_buffer[i][loc] = cache_v[:, self.full_heads[i]]
        if self.window_heads[i].numel():
            slots = self.window_slot[loc]
            kept = slots > 0
            self.window_k[i][slots[kept]] = cache_k[kept][:, self.window_heads[i]]
            self.window_v[i][slots[kept]] = cache_v[kept][:, self.window_heads[i]]

    def copy_window_heads(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        turn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> int:
        """Packets carry windows: where a target token slot holds a window slot and its source does too, every
        layer's compressed-head K (turned by `turn(k, cos, sin)`, per token) and V are copied across; the
        count copied. (The full heads are copied by the caller, through `k_buffer`/`v_buffer`.)"""
        to, frm = self.window_slot[target], self.window_slot[source]
        both = (to > 0) & (frm > 0)
        if not bool(both.any()):
            return 0
        to, frm, cos, sin = to[both], frm[both], cos[both.to(cos.device)], sin[both.to(sin.device)]
        for i in range(self.layer_num):
            if self.window_heads[i].numel():
                self.window_k[i][to] = turn(self.window_k[i][frm], cos, sin)
                self.window_v[i][to] = self.window_v[i][frm]
        return int(to.numel())

    def get_window_buffers(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = layer_id - self.start_layer
        return self.window_k[i], self.window_v[i]

    def get_kv_size_bytes(self) -> tuple[int, int]:
        k = sum(x.numel() * x.element_size() for x in (*self.k_buffer, *self.window_k))
        v = sum(x.numel() * x.element_size() for x in (*self.v_buffer, *self.window_v))
        return k, v

    def describe(self) -> dict[str, int | float]:
        main, window = self.layout.bytes_per_token(self.head_dim, self.v_head_dim, self.store_dtype.itemsize)
        return {
            "heads_compressed": self.layout.compressed_count,
            "heads_total": self.layout.num_layers * self.layout.num_kv_heads,
            "sink": self.layout.sink,
            "window": self.layout.window,
            "bytes_per_token": main,
            "bytes_per_window_slot": window,
            "token_slots": self.size,
            "window_slots": self.window_size,
            "window_slots_used": self.used_window_slots,
            "admissions_deferred": self.admissions_deferred,
            "decode_shortfalls": self.decode_shortfalls,
            "interior_windows_dropped": self.interior_windows_dropped,
        }


def _first_occurrence(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique values, index of each one's first occurrence in `values`)."""
    unique, inverse = torch.unique(values, return_inverse=True)
    first = torch.full((unique.numel(),), values.numel(), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(values.numel()), reduce="amin")
    return unique, first
