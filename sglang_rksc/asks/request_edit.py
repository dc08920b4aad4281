"""The one place ASKS edits SGLang's `Req`: which requests may fork, and the rewrite of a prompt."""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

from sglang_rksc.wire import Option, request_options

CLIENT_PROMPT_LEN = "_rksc_client_prompt_len"  # set on a rewritten request: its prompt length as sent
CLIENT_PROMPT_IDS = "_rksc_client_prompt_ids"  # ... and its prompt as sent (what an audit computes exactly)


def why_not_forked(req: Any) -> str | None:
    """Why this request must keep its own tokens, or None."""
    options = request_options(req)
    if options.get(Option.SEMANTIC) is False:
        return "opted out"
    if options.get(Option.FORK) is False:
        return "fork opted out"
    if options.get(Option.PACKETS):
        return "packets"  # its prompt's spans are copied by position: a rewrite would move them
    if len(req.output_ids) > 0:
        return "resumed request"
    if getattr(req, "multimodal_inputs", None) is not None:
        return "multimodal"
    if getattr(req, "session", None) is not None:
        return "session"
    if getattr(req, "positional_embed_overrides", None) is not None:
        return "embedding overrides"
    if req.is_dllm():
        return "diffusion LM"
    return None


def input_logprobs_start(req: Any) -> int | None:
    """Where the input logprobs a request asks for start in its prompt as sent, or None.

    A `select` asks for the logprobs of its choice tokens only (from just before them), so a fork
    is safe as long as the rewritten span ends before that point: no logprob describes donor tokens.
    """
    if req.return_logprob and req.logprob_start_len >= 0:
        return req.logprob_start_len
    return None


def opted_out(req: Any) -> bool:
    """A request that refused semantic sharing: its span is not deduplicated either."""
    return request_options(req).get(Option.SEMANTIC) is False


def rewrite_prompt(req: Any, new_ids: Sequence[int]) -> None:
    """Make the request's prompt `new_ids`, consistently in every field that holds it."""
    old = req.origin_input_ids
    # The response keeps reporting the client's own prompt length: SGLang's frontend places
    # the logprobs of a `select` after a prefix commit by it (see CLIENT_PROMPT_LEN).
    setattr(req, CLIENT_PROMPT_LEN, len(old))
    if not hasattr(req, CLIENT_PROMPT_IDS):
        setattr(req, CLIENT_PROMPT_IDS, old)
    new = array("q", new_ids) if isinstance(old, array) else list(new_ids)
    req.origin_input_ids = new
    if req.origin_input_ids_unpadded is old:
        req.origin_input_ids_unpadded = new
    req.full_untruncated_fill_ids = new + req.output_ids
    if req.logprob_start_len >= 0:  # positions after the span move with it (checked to lie after it)
        req.logprob_start_len += len(new) - len(old)
