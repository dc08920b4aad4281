"""Attention over the head-split pool (torch, the CPU path and the reference for any GPU kernel).

Per sequence, the query heads of full KV heads attend causally to every position, read from the token
slots; those of compressed KV heads attend to the sinks and the recent window (`sink_window`): stored
positions come from the window slots, the positions this forward computes come from its own K and V
(the middle of a long prefill is never stored). A stored position without a window slot is a bug
upstream (a match past an incomplete window): it raises instead of attending to garbage.
"""

from __future__ import annotations

import os

import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from torch.nn.functional import scaled_dot_product_attention

from sglang_rksc.kernels.sink_window import sink_window_keep, stored_window_positions
from sglang_rksc.kernels.sink_window_decode import triton_decode
from sglang_rksc.packets.attention import extend_with_copied_positions
from sglang_rksc.packets.reuse import QUERY_ATTR
from sglang_rksc.rlkv.kv_pool import HeadSplitKVPool

KERNEL_ENV = "RKSC_HEAD_SPLIT_DECODE_KERNEL"  # "1": the Triton decode path on any device (tests, interpreter)


class MissingWindowKV(RuntimeError):
    pass


class HeadSplitAttnBackend(TorchNativeAttnBackend):
    """torch_native's interface over `HeadSplitKVPool`; selected by the `torch_native` factory when the
    pool is head-split."""

    def __init__(self, model_runner) -> None:
        super().__init__(model_runner)
        pool = model_runner.token_to_kv_pool
        assert isinstance(pool, HeadSplitKVPool), type(pool)
        self.pool = pool
        self.sink, self.window = pool.layout.sink, pool.layout.window
        # Decode on a GPU goes through the Triton kernel (checked on an H100 against the torch reference);
        # it trusts the window invariant the torch path checks (`MissingWindowKV`), to avoid a host sync.
        self.decode_kernel = pool.device != "cpu" or os.environ.get(KERNEL_ENV) == "1"

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        computed = getattr(getattr(forward_batch, "sampling_info", None), QUERY_ATTR, None)
        if computed is not None:  # a prefill that copied packets: it computes only some of its positions
            return self._forward_copied(q, k, v, layer, forward_batch, save_kv_cache, computed)
        return self._forward(q, k, v, layer, forward_batch, save_kv_cache, forward_batch.extend_prefix_lens, False)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        return self._forward(q, k, v, layer, forward_batch, save_kv_cache, forward_batch.seq_lens - 1, True)

    def _split(self, q, k, v, layer, forward_batch, save_kv_cache):
        """Store this forward's K and V; the per-head views and the output buffer; the layer's full and
        compressed KV heads and the query heads of each."""
        if layer.is_cross_attention or layer.sliding_window_size not in (None, -1):
            raise NotImplementedError("head compression supports causal self-attention without sliding windows")
        if save_kv_cache:
            self.pool.set_kv_buffer(layer, forward_batch.out_cache_loc, k, v)
        heads_q, heads_kv, dim = layer.tp_q_head_num, layer.tp_k_head_num, layer.qk_head_dim
        q_ = q.reshape(-1, heads_q, dim)
        k_ = k.reshape(-1, heads_kv, dim)
        v_ = v.reshape(-1, heads_kv, layer.v_head_dim)
        o = q.new_empty((q_.shape[0], heads_q, layer.v_head_dim))
        i = layer.layer_id - self.pool.start_layer
        group = heads_q // heads_kv
        full_kv, window_kv = self.pool.full_heads[i], self.pool.window_heads[i]
        heads = (full_kv, window_kv, *(self.pool.layout.query_heads(h.tolist(), group) for h in (full_kv, window_kv)))
        return q_, k_, v_, o, heads

    def _forward(self, q, k, v, layer, forward_batch, save_kv_cache, prefix_lens, decode: bool):
        q_, k_, v_, o, heads = self._split(q, k, v, layer, forward_batch, save_kv_cache)
        full_kv, window_kv, full_q, window_q = heads
        k_full, v_full = self.pool.get_key_buffer(layer.layer_id), self.pool.get_value_buffer(layer.layer_id)
        k_window, v_window = self.pool.get_window_buffers(layer.layer_id)
        req_to_token = self.req_to_token_pool.req_to_token
        if decode and self.decode_kernel:
            batch = (req_to_token, forward_batch.req_pool_indices, forward_batch.seq_lens)
            for heads, k_buf, v_buf, window in (
                (full_q, k_full, v_full, None),
                (window_q, k_window, v_window, self.window),
            ):
                if heads.numel():
                    o[:, heads] = triton_decode(
                        q_[:, heads].contiguous(), k_buf, v_buf, self.pool.window_slot, *batch, self.sink, window,
                        layer.scaling,
                    )  # fmt: skip
            return o.view(-1, layer.tp_q_head_num * layer.v_head_dim)
        start = 0
        for row, seq_len, prefix_len in zip(
            forward_batch.req_pool_indices.tolist(), forward_batch.seq_lens.tolist(), prefix_lens.tolist(), strict=True
        ):
            end = start + seq_len - prefix_len
            slots = req_to_token[row, :seq_len]
            if full_q.numel():
                o[start:end, full_q] = self._attend_causal(
                    q_[start:end, full_q], k_full[slots], v_full[slots], prefix_len, layer, decode
                )
            if window_q.numel():
                o[start:end, window_q] = self._attend_window(
                    q_[start:end, window_q],
                    k_[start:end, window_kv],
                    v_[start:end, window_kv],
                    slots,
                    k_window,
                    v_window,
                    prefix_len,
                    layer,
                    decode,
                )
            start = end
        return o.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def _forward_copied(self, q, k, v, layer, forward_batch, save_kv_cache, computed):
        """Prefill where each request computes the positions `computed[row]` (None: the end of its sequence, as
        usual) and the other positions after its prefix were copied from packets. Full heads: the packets'
        attention over every position (`packets.attention`). Compressed heads: the sinks and window of each
        computed query, read from this forward's own K and V or from window slots; a copied position whose
        compressed-head KV did not come with the packet (the tree had dropped it) is left out, as the
        packet's KV itself is an approximation; a missing position of the matched prefix is a bug and raises."""
        q_, k_, v_, o, heads = self._split(q, k, v, layer, forward_batch, save_kv_cache)
        full_kv, window_kv, full_q, window_q = heads
        req_to_token = self.req_to_token_pool.req_to_token
        counts = forward_batch.extend_seq_lens_cpu
        if full_q.numel():
            k_full, v_full = self.pool.get_key_buffer(layer.layer_id), self.pool.get_value_buffer(layer.layer_id)
            o[:, full_q] = extend_with_copied_positions(
                q_[:, full_q].contiguous(), k_full, v_full, req_to_token, forward_batch.req_pool_indices,
                forward_batch.seq_lens, counts, computed, layer.scaling,
            )  # fmt: skip
        if window_q.numel():
            k_window, v_window = self.pool.get_window_buffers(layer.layer_id)
            start = 0
            rows = zip(
                forward_batch.req_pool_indices.tolist(),
                forward_batch.seq_lens.tolist(),
                forward_batch.extend_prefix_lens.tolist(),
                counts,
                computed,
                strict=True,
            )
            for pool_row, seq_len, prefix_len, count, where in rows:
                where = torch.arange(seq_len - count, seq_len) if where is None else where.cpu()
                end = start + count
                o[start:end, window_q] = self._attend_window_at(
                    q_[start:end, window_q], k_[start:end, window_kv], v_[start:end, window_kv],
                    req_to_token[pool_row, :seq_len], k_window, v_window, where, prefix_len, layer,
                )  # fmt: skip
                start = end
        return o.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def _attend_window_at(self, q, k_new, v_new, slots, k_window, v_window, where, prefix_len, layer):
        """Compressed heads of queries at positions `where` (ascending) over a sequence of `len(slots)`."""
        seq_len = slots.numel()
        positions = torch.arange(seq_len)
        window_slots = self.pool.window_slot[slots].cpu()
        computed = torch.zeros(seq_len, dtype=torch.bool)
        computed[where] = True
        available = (window_slots > 0) | computed
        keep = sink_window_keep(where, positions, self.sink, self.window)
        missing = keep & ~available & (positions < prefix_len)[None, :]
        if bool(missing.any()):
            lost = positions[missing.any(0)][:8].tolist()
            raise MissingWindowKV(f"compressed-head KV of positions {lost} was dropped but is needed")
        stored = window_slots.to(k_window.device)
        k_all, v_all = k_window[stored].to(q.dtype), v_window[stored].to(q.dtype)
        at, absent = where.to(q.device), (~available).to(q.device)
        k_all[at], v_all[at] = k_new.to(q.dtype), v_new.to(q.dtype)
        k_all[absent] = 0  # never read (masked); no stale value can turn into NaN
        v_all[absent] = 0
        mask = (keep & available[None, :]).to(q.device)
        out = scaled_dot_product_attention(
            q.movedim(0, 1)[None],
            k_all.movedim(0, 1)[None],
            v_all.movedim(0, 1)[None],
            attn_mask=mask[None, None],
            scale=layer.scaling,
            enable_gqa=q.shape[1] != k_all.shape[1],
        )[0]
        return out.movedim(0, 1)

    @staticmethod
    def _attend_causal(q, k, v, prefix_len, layer, decode):
        """q: [n, Hq, D] at positions prefix_len.., k/v: [prefix_len + n, Hkv, D]; computed as torch_native
        computes it (a decode step's one query unmasked, an extend's queries padded and causal), so that
        heads that see everything give the same numbers as the uncompressed server."""
        n, seq_len = q.shape[0], k.shape[0]
        gqa = q.shape[1] != k.shape[1]
        if decode:
            out = scaled_dot_product_attention(
                q.movedim(0, 1)[None],
                k.movedim(0, 1)[None].to(q.dtype),
                v.movedim(0, 1)[None].to(q.dtype),
                scale=layer.scaling,
                enable_gqa=gqa,
            )[0]
            return out.movedim(0, 1)
        padded = q.new_zeros((q.shape[1], seq_len, q.shape[2]))
        padded[:, prefix_len:] = q.movedim(0, 1)
        out = scaled_dot_product_attention(
            padded[None],
            k.movedim(0, 1)[None].to(q.dtype),
            v.movedim(0, 1)[None].to(q.dtype),
            is_causal=True,
            scale=layer.scaling,
            enable_gqa=gqa,
        )[0]
        return out[:, prefix_len:].movedim(0, 1)[:n]

    def _attend_window(self, q, k_new, v_new, slots, k_window, v_window, prefix_len, layer, decode):
        """Compressed heads: stored sinks and window (window slots) plus this forward's own K and V."""
        seq_len = prefix_len + q.shape[0]
        if seq_len <= self.window:  # every position is within the window: plain causal attention
            k_all = torch.cat((self._stored(k_window, slots, torch.arange(prefix_len)), k_new))
            v_all = torch.cat((self._stored(v_window, slots, torch.arange(prefix_len)), v_new))
            return self._attend_causal(q, k_all, v_all, prefix_len, layer, decode)
        stored = stored_window_positions(prefix_len, self.sink, self.window)
        k_pos = torch.cat((stored, torch.arange(prefix_len, seq_len)))
        k_all = torch.cat((self._stored(k_window, slots, stored), k_new)).to(q.dtype)
        v_all = torch.cat((self._stored(v_window, slots, stored), v_new)).to(q.dtype)
        keep = sink_window_keep(torch.arange(prefix_len, seq_len), k_pos, self.sink, self.window)
        out = scaled_dot_product_attention(
            q.movedim(0, 1)[None],
            k_all.movedim(0, 1)[None],
            v_all.movedim(0, 1)[None],
            attn_mask=keep[None, None],
            scale=layer.scaling,
            enable_gqa=q.shape[1] != k_all.shape[1],
        )[0]
        return out.movedim(0, 1)

    def _stored(self, buffer: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        window_slots = self.pool.window_slot[slots[positions]]
        if bool((window_slots == 0).any()):
            missing = positions[window_slots == 0][:8].tolist()
            raise MissingWindowKV(f"compressed-head KV of positions {missing} was dropped but is needed")
        return buffer[window_slots]
