"""The drafts' small hooks on SGLang (the seam table installs them) and the launch check."""

from __future__ import annotations

from typing import Any

from sglang_rksc.config import RkscConfig
from sglang_rksc.runtime.cpu import has_flag


def skip_kv_copy_warmup(original: Any, pool: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `MHATokenToKVPool._init_kv_copy_and_warmup`: any speculative algorithm makes the KV pool
    warm up SGLang's Triton KV mover, which a CPU does not have. Our chains never move KV (accepted drafts are
    already where they belong), so on a CPU the mover stays off."""
    if str(pool.device).startswith("cuda"):
        return original(pool, *args, **kwargs)
    pool._kv_copy_config = None
    return None


def assign_slots(
    original: Any,
    req_pool_indices: Any,
    req_to_token: Any,
    start_offset: Any,
    end_offset: Any,
    out_cache_loc: Any,
    batch_size: int,
) -> None:
    """AROUND hook on `allocation.assign_req_to_token_pool_func`: the slots a speculative decode step reserved
    enter each request's row of `req_to_token`. SGLang calls an sgl_kernel CPU op there; this is it in torch."""
    if req_to_token.is_cuda:
        return original(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, batch_size)
    taken = 0
    for row, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist(), strict=True):
        req_to_token[row, start:end] = out_cache_loc[taken : taken + end - start].to(req_to_token.dtype)
        taken += end - start
    return None


def register_algorithm(register: Any, spec_class: Any) -> None:
    """`SpeculativeAlgorithm.register(RKSC_DRAFTS, spec_class=...)`, once per process."""
    from sglang.srt.speculative.spec_registry import get_spec

    from sglang_rksc.drafts import ALGORITHM_NAME
    from sglang_rksc.drafts.algorithm import worker_factory

    if get_spec(ALGORITHM_NAME) is None:
        register(ALGORITHM_NAME, supports_overlap=False, spec_class=spec_class)(worker_factory)


def launch_refusal(settings: RkscConfig, argv: list[str]) -> str | None:
    """Why drafts cannot run with the rest of this launch (None: they can)."""
    if not settings.drafts.on:
        return None
    if settings.heads.sparsity > 0:
        return (
            "--rksc-drafts on does not run with --rksc-head-compression: head compression keeps its windows through "
            "SGLang's one-token decode allocation, which speculative decoding replaces"
        )
    for flag in ("--speculative-algorithm", "--speculative-num-draft-tokens", "--enable-mixed-chunk"):
        if has_flag(argv, flag):
            return f"--rksc-drafts on sets SGLang's speculative settings itself; drop {flag}"
    return None


def speculative_flags(settings: RkscConfig) -> list[str]:
    """SGLang's flags for `--rksc-drafts on`."""
    from sglang_rksc.drafts import ALGORITHM_NAME

    width = settings.drafts.max_tokens + 1
    return ["--speculative-algorithm", ALGORITHM_NAME, "--speculative-num-draft-tokens", str(width)]
