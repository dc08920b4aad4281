"""Real SGLang memory pools on the CPU, driven the way the scheduler drives them.

A request is admitted with SGLang's own `Req.init_next_round_input` (which
calls the cache's `match_prefix`), locked, given a `ReqToTokenPool` row and
KV slots from a `TokenToKVPoolAllocator`, "computed" (hidden states written
into `SlotStates` for the new slots, as the capture hook does), and released
with SGLang's own `release_kv_cache` (checkpoint, free, unlock, `on_release`).
No model runs: the hidden state of a token is a deterministic function of the
token, so near-identical spans get near-identical states.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable, Sequence
from typing import Any

import torch
from sglang.srt.managers.schedule_batch import FINISH_LENGTH, Req
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.common import release_kv_cache
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.sampling.sampling_params import SamplingParams

from sglang_rksc.cache.embeddings import SlotStates, TokenProbe
from sglang_rksc.cache.radix_cache import RkscRadixCache
from sglang_rksc.config import RkscConfig, SemanticSettings
from sglang_rksc.srt import seams
from sglang_rksc.srt.features import ServedModel, feature_factories

HIDDEN = 16
VOCAB = 512


def asks_config(on: bool = True, **settings) -> RkscConfig:
    """A config with semantic sharing on (or off) and these ASKS settings."""
    return RkscConfig(semantic=SemanticSettings(on=on, **settings))


def token_states(tokens: Sequence[int]) -> torch.Tensor:
    """A fixed random vector per token id (same token, same state)."""
    gen = torch.Generator().manual_seed(1234)
    table = torch.randn(VOCAB, HIDDEN, generator=gen)
    return table[torch.as_tensor(list(tokens), dtype=torch.int64)]


class PoolHarness:
    def __init__(
        self,
        config: RkscConfig | None = None,
        *,
        slots: int = 512,
        rows: int = 32,
        states_fn: Callable[[Sequence[int]], torch.Tensor] = token_states,
        eviction_policy: str = "lru",
        kv_events: bool = False,
        stock: bool = False,  # SGLang's own RadixCache instead of ours (for comparisons)
        extra_features: Sequence[Callable[[Any], Any]] = (),  # factories of more cache features, after the list's
    ) -> None:
        self.allocator = TokenToKVPoolAllocator(
            size=slots, dtype=torch.bfloat16, device="cpu", kvcache=None, need_sort=False
        )
        self.req_pool = ReqToTokenPool(size=rows, max_context_len=1024, device="cpu", enable_memory_saver=False)
        params = CacheInitParams(
            disable=False,
            req_to_token_pool=self.req_pool,
            token_to_kv_pool_allocator=self.allocator,
            page_size=1,
            eviction_policy=eviction_policy,
            enable_kv_cache_events=kv_events,
        )
        self.states = SlotStates(slots + 1, HIDDEN, dtype=torch.float32)
        probe = TokenProbe(token_states(range(VOCAB)))
        if stock:
            self.cache = RadixCache(params)
        else:
            if eviction_policy == "rsbcm":
                seams.install_registrations()  # what the plugin does in a server process
            model = ServedModel(states=self.states, probe=probe)
            factories = [*feature_factories(config or asks_config(), model), *extra_features]
            self.cache = RkscRadixCache(params, factories)
        self.states_fn = states_fn
        self.slots = slots
        self._ids = itertools.count()
        self.running: list[Req] = []
        self.released: list[str] = []  # rids, in release order

    @property
    def asks(self) -> Any:
        """The cache's ASKS feature (None when off)."""
        return self.cache.features.get("asks")

    @property
    def marks(self) -> Any:
        return self.cache.features.get("marks")

    def _alloc(self, n: int) -> torch.Tensor | None:
        """n slots, evicting from the tree first when the pool is short (as the scheduler does)."""
        short = n - self.allocator.available_size()
        if short > 0:
            self.cache.evict(EvictParams(num_tokens=short))
        return self.allocator.alloc(n)

    def admit(
        self,
        tokens: Sequence[int],
        *,
        extra_key: str | None = None,
        cache_salt: str | None = None,
        custom_params: dict | None = None,
        max_new_tokens: int = 8,
        logprob_start_len: int | None = None,
    ) -> Req | None:
        """Admit a request; None (and nothing held) when the pool cannot fit it.

        `logprob_start_len`: the request asks for input logprobs from there (as a `select` does)."""
        req = Req(
            f"r{next(self._ids)}",
            "",
            array("q", tokens),
            SamplingParams(max_new_tokens=max_new_tokens, custom_params=custom_params),
            return_logprob=logprob_start_len is not None,
            extra_key=extra_key,
            cache_salt=cache_salt,
        )
        if logprob_start_len is not None:
            req.logprob_start_len = logprob_start_len
        req.init_next_round_input(self.cache)
        req.lock = self.cache.lock(req.last_node)
        fill = req.full_untruncated_fill_ids
        new = self._alloc(len(fill) - req.prefix_len)
        if new is None:
            self.cache.unlock(req.lock)
            return None
        (row,) = self.req_pool.alloc([req])
        prefix = self.cache.prefix_device_indices(req)
        self.req_pool.write((row, slice(0, len(fill))), torch.cat([prefix, new]).to(torch.int32))
        req.kv.kv_allocated_len = req.kv.kv_committed_len = len(fill)
        self.states.write(new, self.states_fn(fill[req.prefix_len :]))
        self.running.append(req)
        return req

    def generate(self, req: Req, output: Sequence[int]) -> int:
        """Decode `output`: each token but the last gets a slot and a state (the last is never
        forwarded). Stops early when the pool runs dry; returns the tokens produced."""
        for i, token in enumerate(output):
            if len(req.output_ids) > 0:
                slot = self._alloc(1)
                if slot is None:
                    return i
                pos = len(req.origin_input_ids) + len(req.output_ids) - 1
                self.req_pool.write((req.kv.req_pool_idx, slice(pos, pos + 1)), slot.to(torch.int32))
                req.kv.kv_allocated_len = req.kv.kv_committed_len = pos + 1
                self.states.write(slot, self.states_fn([req.output_ids[-1]]))
            req.output_ids.append(token)
        return len(output)

    def finish(self, req: Req) -> None:
        req.finished_reason = FINISH_LENGTH(length=len(req.output_ids))
        release_kv_cache(req, self.cache, checkpoint=True)
        self.running.remove(req)
        self.released.append(req.rid)

    def run(self, tokens: Sequence[int], output: Sequence[int], **kwargs) -> Req:
        req = self.admit(tokens, **kwargs)
        assert req is not None, "pool exhausted"
        assert self.generate(req, output) == len(output), "pool exhausted"
        self.finish(req)
        return req

    # ------------------------------------------------------------ invariants

    def tree_slots(self) -> list[int]:
        slots, stack = [], [self.cache.root_node]
        while stack:
            node = stack.pop()
            if node is not self.cache.root_node:
                slots.extend(int(x) for x in node.value)
            stack.extend(node.children.values())
        return slots

    def held_slots(self) -> list[int]:
        """Slots that running requests hold outside the tree."""
        out = []
        for req in self.running:
            row = self.req_pool.req_to_token[req.kv.req_pool_idx]
            out.extend(int(x) for x in row[req.kv.cache_protected_len : req.kv.kv_allocated_len])
        return out

    def check(self) -> None:
        tree = self.tree_slots()
        held = self.held_slots()
        free = [int(x) for x in torch.cat([self.allocator.free_pages, self.allocator.release_pages])]
        assert len(tree) == len(set(tree)), "a KV slot is owned by two tree nodes"
        everything = tree + held + free
        assert len(everything) == len(set(everything)), "a KV slot is both free and in use, or freed twice"
        assert sorted(everything) == list(range(1, self.slots + 1)), "a KV slot leaked"
        cache = self.cache
        assert cache.evictable_size() + cache.protected_size() == len(tree) == cache.total_size()
