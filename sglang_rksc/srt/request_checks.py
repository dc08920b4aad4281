"""Requests checked at the door: what SGLang 0.5.23 lets through and its scheduler then dies on.

Three hooks; what they refuse never reaches the scheduler:

- `normalize_request`, AROUND `GenerateReqInput.normalize_batch_and_arguments`:
  a batch whose per-prompt argument lists are empty or shorter than its prompts,
  or hold something other than objects, and a number of samples per prompt (`n`)
  below one (SGLang answers HTTP 500 when it indexes past their end).
- `validate_request`, AROUND `TokenizerManager._validate_one_request` (the
  tokenizer process, once per prompt, batch elements one by one): a bad request
  raises `ValueError`, which SGLang answers with HTTP 400 while it keeps serving.
  Checked before SGLang's own validation: the types SGLang's code assumes
  (`sampling_params` an object, `custom_params` an object) and our options.
  After it: a verification's CGEE spec (which may append tokens to the prompt),
  then the prompt itself, then the limits a forward would trip over.
- `scheduler_prompt_error`, AFTER `validate_input_length` (the scheduler, for
  requests that reach it by another road, such as SGLang's gRPC entry): the same
  prompt check, answered the way SGLang answers its own length check, by
  finishing the request with an abort (HTTP 400) instead of running it.

An empty prompt is refused rather than given a meaning: SGLang defines none
(with no BOS token, "" tokenizes to nothing and the prefill crashes), and a
client that wants a BOS-only prompt can send that token's id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sglang_rksc.config import RkscConfig
from sglang_rksc.exit.validate import resolve_request
from sglang_rksc.wire import check_custom_params

# GenerateReqInput fields that a batch holds one element of per prompt (SGLang's `__getitem__` indexes them).
PER_PROMPT_FIELDS = (
    "sampling_params",
    "return_logprob",
    "logprob_start_len",
    "top_logprobs_num",
    "token_ids_logprob",
    "return_sampling_mask",
    "sampling_logprobs_mode",
    "return_hidden_states",
    "lora_path",
    "lora_id",
    "custom_logit_processor",
    "image_data",
    "video_data",
    "audio_data",
    "modalities",
    "watermark",
    "extra_key",
    "cache_salt",
    "positional_embed_overrides",
    "bootstrap_host",
    "bootstrap_port",
    "bootstrap_room",
    "bootstrap_pair_key",
    "decode_tp_size",
)


def _check_sampling_params_shape(obj: Any) -> None:
    params = getattr(obj, "sampling_params", None)
    if isinstance(params, list):
        if not params:
            raise ValueError("sampling_params is an empty list: give one object per prompt, or a single object")
        for i, element in enumerate(params):
            if not isinstance(element, dict):
                raise ValueError(f"sampling_params[{i}] must be an object, got {type(element).__name__}")
    for element in params if isinstance(params, list) else [params]:
        _check_samples_per_prompt(element)


def _check_samples_per_prompt(params: Any) -> None:
    # A batch with n below 1 is expanded to fewer request ids than prompts, and SGLang indexes past them (500).
    n = params.get("n", 1) if isinstance(params, dict) else 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"sampling_params.n (samples per prompt) must be a whole number >= 1, got {n!r}")


def _check_batch_lengths(obj: Any) -> None:
    if getattr(obj, "is_single", True) or not isinstance(obj.rid, list):
        return
    prompts = len(obj.rid)
    for name in PER_PROMPT_FIELDS:
        value = getattr(obj, name, None)
        if isinstance(value, list) and len(value) < prompts:
            raise ValueError(
                f"{name} has {len(value)} element(s) for {prompts} prompts: give one per prompt, or a single value"
            )


def normalize_request(original: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `GenerateReqInput.normalize_batch_and_arguments`."""
    _check_sampling_params_shape(obj)
    try:
        result = original(obj, *args, **kwargs)
    except (IndexError, KeyError, TypeError, AttributeError) as exc:
        # Normalization only reshapes what the client sent: its failures are malformed arguments.
        raise ValueError(f"the request's arguments do not fit together ({type(exc).__name__}: {exc})") from None
    _check_batch_lengths(obj)
    return result


def prompt_error(input_ids: Sequence[int] | None, vocab_size: int | None) -> str | None:
    """Why this prompt cannot be run by the model, or None."""
    if input_ids is None:
        return None  # input_embeds: SGLang checks those
    if len(input_ids) == 0:
        return (
            "the prompt is empty: it has no tokens (an empty or whitespace-only text can tokenize to none); "
            "send at least one token"
        )
    if vocab_size is None:
        return None
    low, high = min(input_ids), max(input_ids)
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        position = list(input_ids).index(bad)
        return f"prompt token {position} is {bad}, outside the vocabulary [0, {vocab_size})"
    return None


def _check_types(obj: Any) -> None:
    """What SGLang's own validation assumes without checking."""
    params = getattr(obj, "sampling_params", None)
    if params is None:
        return
    if not isinstance(params, dict):
        raise ValueError(
            f"sampling_params must be an object for each prompt, got {type(params).__name__} "
            "(a list of them goes with a list of prompts of the same length)"
        )
    check_custom_params(params.get("custom_params"))


def _check_limits(obj: Any, vocab_size: int) -> None:
    """Values SGLang accepts that fail inside the forward or when the request is built."""
    top_logprobs = getattr(obj, "top_logprobs_num", None)
    if getattr(obj, "return_logprob", False) and isinstance(top_logprobs, int) and top_logprobs > vocab_size:
        raise ValueError(f"top_logprobs_num must be at most the vocabulary size {vocab_size}, got {top_logprobs}")
    params = getattr(obj, "sampling_params", None) or {}
    stop_regex = params.get("stop_regex")
    for pattern in [stop_regex] if isinstance(stop_regex, str) else stop_regex or []:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"sampling_params.stop_regex {pattern!r:.80} is not a regular expression: {exc}") from None


def validate_request(original: Any, manager: Any, obj: Any, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `TokenizerManager._validate_one_request`."""
    _check_types(obj)
    result = original(manager, obj, input_ids, *args, **kwargs)
    vocab_size = manager.model_config.vocab_size
    params = getattr(obj, "sampling_params", None)
    if isinstance(params, dict):
        resolve_request(params, input_ids, manager.tokenizer, manager.model_config, RkscConfig.current().cgee)
    if getattr(obj, "input_embeds", None) is None:
        error = prompt_error(input_ids, vocab_size)
        if error is not None:
            raise ValueError(error)
    _check_limits(obj, vocab_size)
    return result


def scheduler_prompt_error(result: str | None, req: Any, *args: Any, **kwargs: Any) -> str | None:
    """AFTER hook on `sglang.srt.managers.utils.validate_input_length`: SGLang's length check plus ours."""
    if result is not None or getattr(req, "input_embeds", None) is not None:
        return result
    return prompt_error(req.origin_input_ids, getattr(req, "vocab_size", None))
