"""The speculative worker of `--rksc-drafts`: drafts from the draft store, one verify forward per decode step.

SGLang's speculative scheduler (the V2 schema NGRAM uses) runs it: before each decode step it has reserved KV
slots past every request's committed length; the worker fills the step with each request's last token and its
draft, runs the target model once over all of them (`TARGET_VERIFY`), keeps what verification accepts, and
reports per request the accepted run (drafts, then one token of the model's). The scheduler commits that run
and streams it.

- On a GPU the verify step is SGLang's NGRAM path (its kernels, attention backends and sampling verification),
  fed with our drafts as one-branch trees of a fixed width.
- On a CPU SGLang's kernels do not exist: the step is ours, in torch, with a width chosen per step
  (`length.py`), torch-native attention over the drafted positions (`attention.py`), and the verification of
  `kernels/chain_verify.py`. The slots past the accepted run are freed at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.scheduler import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_info import NgramVerifyInput

from sglang_rksc.config import RkscConfig
from sglang_rksc.drafts.length import DraftLength
from sglang_rksc.drafts.stats import DRAFTS, RequestDrafts
from sglang_rksc.drafts.store import Draft, DraftStore
from sglang_rksc.kernels.chain_verify import ChainVerdict, sampling_probs, verify_greedy, verify_sampled
from sglang_rksc.wire import CUSTOM_KEY, Option

logger = logging.getLogger(__name__)
# Tests only: "accept-all" replaces verification by accepting every draft, so that a test can show it would
# notice a verification that does not keep the model's distribution.
FAULT_ENV = "RKSC_DRAFTS_FAULT"
MAX_RECORDS = 4096  # per-request counters kept for requests out of the batch (a retracted one comes back)


def namespace_of(req: Any) -> Hashable:
    """A request's tenant: drafts never cross it."""
    return (req.extra_key, req.cache_salt)


def drafts_allowed(req: Any) -> bool:
    custom = getattr(req.sampling_params, "custom_params", None) or {}
    return (custom.get(CUSTOM_KEY) or {}).get(Option.DRAFTS, True) is not False


class DraftWorker(BaseSpecWorker):
    """The CPU worker, and the drafting half of the GPU one (`gpu_worker.gpu_worker_class()` adds SGLang's NGRAM
    verify step, whose module imports GPU kernels)."""

    def __init__(self, server_args: Any, gpu_id: int, nccl_port: int, target_worker: Any) -> None:
        BaseSpecWorker.__init__(self)  # not NGRAM's: its n-gram corpus is replaced by the draft store
        from sglang.srt.runtime_context import get_device, get_schedule, get_spec

        self.server_args = server_args
        self.enable_overlap = not get_schedule().disable_overlap_schedule
        self._target_worker = target_worker
        self.model_runner = target_worker.model_runner
        self.page_size = get_schedule().page_size
        spec = get_spec()
        self.draft_token_num = spec.speculative_num_draft_tokens
        self.speculative_num_draft_tokens = spec.speculative_num_draft_tokens
        self.max_trie_depth = 0
        self.topk = 1
        self.speculative_num_steps = spec.speculative_num_steps
        self.device = get_device().device
        self.adaptive_controller = None
        self._prev_decode_rids: set = set()
        self.grammar_tree_host = None

        settings = RkscConfig.current().drafts
        self.on_gpu = torch.device(self.device).type == "cuda"
        self.store = DraftStore(settings.store_tokens, settings.gram)
        self.length = DraftLength.for_profile(settings.profile, settings.max_tokens, on_gpu=self.on_gpu)
        self.requests: dict[str, RequestDrafts] = {}
        DRAFTS.attach(self)

    @property
    def draft_worker(self) -> None:
        return None  # no draft model: drafts come from the store

    def alloc_memory_pool(self, **kwargs: Any) -> None:
        super().alloc_memory_pool(**kwargs)  # NGRAM's (GPU) sizes its verify buffers here

    def note_request_finished(self, *, rid: str, natural_stop: bool) -> None:
        record = self.requests.pop(rid, None)
        if record is not None:
            self.store.finish(record.namespace, rid)

    # ------------------------------------------------------------------ drafting

    def clear_cache_pool(self) -> None:
        self.store.clear()
        self.requests.clear()
        self._prev_decode_rids = set()

    def _propose(self, batch: ScheduleBatch, limit: int) -> list[Draft | None]:
        """Each request's draft (None: no match, or drafts off for it), after recording its tokens."""
        rids = set()
        drafts: list[Draft | None] = []
        for req in batch.reqs:
            rids.add(req.rid)
            space = namespace_of(req)
            # The store already holds what the last verify step accepted; a request seen afresh (new,
            # retracted, or run on the GPU path) is recorded whole.
            if self.store.length(space, req.rid) != len(req.origin_input_ids_unpadded) + len(req.output_ids):
                self.store.update(space, req.rid, [*req.origin_input_ids_unpadded, *req.output_ids])
            drafts.append(self.store.propose(space, req.rid, limit) if drafts_allowed(req) else None)
        for gone in self._prev_decode_rids - rids:  # finished, aborted or retracted: evictable from now on
            record = self.requests.get(gone)
            if record is not None:
                self.store.finish(record.namespace, gone)
        self._prev_decode_rids = rids
        if len(self.requests) > MAX_RECORDS:  # requests that left without finishing (aborted while waiting)
            for rid in [r for r in self.requests if r not in rids][: len(self.requests) - MAX_RECORDS]:
                del self.requests[rid]
        return drafts

    def _prepare_draft_tokens(self, batch: ScheduleBatch) -> tuple[np.ndarray, np.ndarray]:
        """NGRAM's interface (GPU path): `draft_token_num` tokens per request, the last one first, and each
        request's tree mask; our drafts are chains, padded by repeating the last token (exact either way)."""
        width = self.draft_token_num
        drafts = self._propose(batch, width - 1)
        tokens = np.empty((len(batch.reqs), width), dtype=np.int64)
        for i, (req, draft) in enumerate(zip(batch.reqs, drafts, strict=True)):
            row = [req.output_ids[-1], *(draft.tokens if draft else ())]
            tokens[i] = row + [row[-1]] * (width - len(row))
            self._record_draft(req, draft, width)
        chain = np.tril(np.ones((width, width), dtype=bool))
        mask = np.broadcast_to(chain, (len(batch.reqs), width, width)).reshape(-1)
        return tokens.reshape(-1), np.ascontiguousarray(mask)

    def _record_draft(self, req: Any, draft: Draft | None, width: int) -> None:
        record = self.requests.setdefault(req.rid, RequestDrafts(namespace_of(req)))
        record.pending = (draft.source, min(len(draft.tokens), width - 1)) if draft else None

    # ------------------------------------------------------------------ the step

    def forward_batch_generation(
        self, batch: ScheduleBatch, on_publish: Any = None, pp_proxy_tensors: Any = None
    ) -> GenerationBatchResult:
        if self.on_gpu:
            decode = batch.forward_mode.is_decode()
            result = super().forward_batch_generation(batch, on_publish, pp_proxy_tensors)
            if decode:
                self._account(batch, result.accept_lens.tolist(), self.draft_token_num, None)
            return result
        if not batch.forward_mode.is_decode():
            return self._prefill(batch, on_publish)
        before = batch.spec_info
        try:
            return self._verify_on_cpu(batch, on_publish)
        except Exception:
            # Leave the batch as the scheduler knows it, so that a contained failure aborts it cleanly.
            batch.forward_mode, batch.spec_info = ForwardMode.DECODE, before
            raise

    def _prefill(self, batch: ScheduleBatch, on_publish: Any) -> GenerationBatchResult:
        """A prefill is a plain target forward; its sampled token is each row's whole accepted run."""
        forward = self.target_worker.forward_batch_generation(batch)
        accept_tokens = torch.zeros((len(batch.reqs), self.draft_token_num), dtype=torch.int64)
        accept_tokens[:, 0] = forward.next_token_ids
        accept_lens = torch.ones(len(batch.reqs), dtype=torch.int32)
        new_seq_lens = batch.seq_lens.clone()
        if on_publish is not None:
            on_publish(new_seq_lens)
        return self._result(
            forward.logits_output,
            forward.next_token_ids,
            accept_tokens,
            accept_lens,
            new_seq_lens,
            can_run_cuda_graph=forward.can_run_cuda_graph,
        )

    def _result(
        self,
        logits_output: Any,
        next_token_ids: torch.Tensor,
        accept_tokens: torch.Tensor,
        accept_lens: torch.Tensor,
        new_seq_lens: torch.Tensor,
        can_run_cuda_graph: bool = False,
    ) -> GenerationBatchResult:
        """What the scheduler takes from a step. Rows keep the launch width (`accept_tokens` [rows, width])
        whatever the step's: the scheduler merges and filters the results of steps of different widths by it."""
        width = self.draft_token_num
        return GenerationBatchResult(
            logits_output=logits_output,
            next_token_ids=next_token_ids,
            can_run_cuda_graph=can_run_cuda_graph,
            accept_lens=accept_lens,
            new_seq_lens=new_seq_lens,
            next_draft_input=NgramVerifyInput(
                draft_token_num=width,
                new_seq_lens=new_seq_lens,
                accept_tokens=accept_tokens.reshape(-1),
                accept_lens=accept_lens,
            ),
            speculative_num_draft_tokens=width,
        )

    def _verify_on_cpu(self, batch: ScheduleBatch, on_publish: Any) -> GenerationBatchResult:
        reqs = batch.reqs
        bs = len(reqs)
        plain = _needs_plain_sampling(batch)
        drafts = self._propose(batch, 0 if plain else self.length.max_drafts)
        width = self.length.width([(len(d.tokens), d.source) if d else (0, "") for d in drafts])
        lengths = [min(len(d.tokens), width - 1) if d else 0 for d in drafts]
        for req, draft in zip(reqs, drafts, strict=True):
            self._record_draft(req, draft, width)

        seq_lens = batch.seq_lens.tolist()
        rows = []
        for req, draft, n in zip(reqs, drafts, lengths, strict=True):
            row = [req.output_ids[-1], *(draft.tokens[:n] if draft else ())]
            rows.append(row + [row[-1]] * (width - len(row)))
        draft_tokens = torch.tensor(rows, dtype=torch.int64)
        offsets = torch.arange(width)
        positions = (batch.seq_lens.view(-1, 1).to(torch.int64) + offsets).reshape(-1)
        req_to_token = batch.req_to_token_pool.req_to_token
        out_cache_loc = req_to_token[batch.req_pool_indices.view(-1, 1), positions.view(bs, width)].reshape(-1)

        batch.forward_mode = ForwardMode.TARGET_VERIFY
        batch.input_ids = draft_tokens.reshape(-1)
        batch.out_cache_loc = out_cache_loc.to(torch.int64)
        batch.spec_info = NgramVerifyInput(
            draft_token=batch.input_ids,
            custom_mask=torch.ones(bs * width * width, dtype=torch.bool),
            positions=positions,
            draft_token_num=width,
        )
        started = time.perf_counter()
        forward = self.target_worker.forward_batch_generation(batch, is_verify=True)
        logits_output = forward.logits_output
        logits = logits_output.next_token_logits.view(bs, width, -1)
        if plain:  # width 1: the logits of one decode step, processed as SGLang's sampler does
            if batch.sampling_info.grammars:
                batch.sampling_info.update_regex_vocab_mask()
            rows_logits = logits.view(bs, -1).clone()
            batch.sampling_info.apply_logits_bias(rows_logits)
            logits = rows_logits.view(bs, width, -1)
        if os.environ.get(FAULT_ENV) == "accept-all":
            last = logits.argmax(dim=-1).tolist()
            verdict = ChainVerdict(
                [[*r[1 : n + 1], last[i][n]] for i, (r, n) in enumerate(zip(rows, lengths, strict=True))], lengths
            )
        else:
            verdict = _verify(batch, draft_tokens, lengths, logits)
        self.length.cpu.observe_step(bs, width, time.perf_counter() - started)

        emitted = torch.zeros((bs, self.draft_token_num), dtype=torch.int64)
        for i, tokens in enumerate(verdict.tokens):
            emitted[i, : len(tokens)] = torch.tensor(tokens)
        accept_lens = torch.tensor([len(t) for t in verdict.tokens], dtype=torch.int32)
        new_seq_lens = batch.seq_lens + accept_lens.to(batch.seq_lens.dtype)
        _free_rejected(batch, [s + int(a) for s, a in zip(seq_lens, accept_lens, strict=True)])
        for req, tokens in zip(reqs, verdict.tokens, strict=True):  # a request's last tokens draft for others too
            self.store.extend(namespace_of(req), req.rid, tokens)
        if batch.return_logprob:
            from sglang.srt.layers.logprob_processor import compute_spec_logprobs

            compute_spec_logprobs(batch, logits_output, emitted[:, :width].reshape(-1), chain_stride=width)
        if on_publish is not None:
            on_publish(new_seq_lens)
        self._account(batch, accept_lens.tolist(), width, time.perf_counter() - started)
        batch.forward_mode = ForwardMode.DECODE
        return self._result(logits_output, emitted.reshape(-1), emitted, accept_lens, new_seq_lens)

    def _account(self, batch: ScheduleBatch, accept_lens: list[int], width: int, seconds: float | None) -> None:
        outcomes = []
        for req, length in zip(batch.reqs, accept_lens, strict=True):
            record = self.requests.setdefault(req.rid, RequestDrafts(namespace_of(req)))
            pending, record.pending = record.pending, None
            source, drafted = pending if pending else ("", 0)
            accepted = min(length - 1, drafted)
            record.add(source, drafted, accepted)
            record.attach_to(req)
            self.length.observe(source, drafted, accepted)
            outcomes.append((source, drafted, accepted, length))
        DRAFTS.record_step(len(batch.reqs), width, outcomes, seconds)


def _needs_plain_sampling(batch: ScheduleBatch) -> bool:
    """Penalties and logit biases change each position's distribution by the tokens before it: such a batch
    takes no drafts, and its one token per row is sampled after SGLang's own logit processing."""
    info = batch.sampling_info
    penalties = info.penalizer_orchestrator is not None and info.penalizer_orchestrator.is_required
    return bool(penalties or info.logit_bias is not None or info.grammars)


def _verify(batch: ScheduleBatch, draft: torch.Tensor, lengths: list[int], logits: torch.Tensor) -> ChainVerdict:
    info = batch.sampling_info
    greedy = [req.sampling_params.top_k <= 1 for req in batch.reqs]
    if all(greedy):
        return verify_greedy(draft, lengths, logits)
    sampled = [i for i, g in enumerate(greedy) if not g]
    index = torch.tensor(sampled)
    probs = sampling_probs(
        logits[index], info.temperatures.view(-1)[index], info.top_ks[index], info.top_ps[index], info.min_ps[index]
    )
    by_sampling = verify_sampled(draft[index], [lengths[i] for i in sampled], probs)
    by_argmax = verify_greedy(draft, lengths, logits)
    tokens, accepted = list(by_argmax.tokens), list(by_argmax.accepted)
    for j, i in enumerate(sampled):
        tokens[i], accepted[i] = by_sampling.tokens[j], by_sampling.accepted[j]
    return ChainVerdict(tokens, accepted)


def _free_rejected(batch: ScheduleBatch, committed: list[int]) -> None:
    """Give back every slot past each request's accepted run: the scheduler reserves them again next step."""
    allocator = batch.token_to_kv_pool_allocator
    req_to_token = batch.req_to_token_pool.req_to_token
    for req, index, keep in zip(batch.reqs, batch.req_pool_indices.tolist(), committed, strict=True):
        held = req.kv.kv_allocated_len
        if held > keep:
            allocator.free(req_to_token[index, keep:held].clone())
            req.kv.kv_allocated_len = keep
