"""Validation of verification requests in SGLang's tokenizer process.

Called by the request checks at the door (`sglang_rksc.srt.request_checks`): a
request marked as a verification has its choices resolved to token ids and every
parameter checked against the model; a bad one raises `ValueError`, which SGLang
returns as HTTP 400 while the server keeps serving. The resolved spec replaces the
request's `cgee` dict, so the scheduler reads only checked values.
"""

from __future__ import annotations

from typing import Any

from sglang_rksc.exit.spec import ExitDefaults, parse, requested, resolve_choices
from sglang_rksc.wire import CUSTOM_KEY, Option


def resolve_request(
    sampling_params: dict[str, Any], input_ids: Any, tokenizer: Any, model_config: Any, defaults: ExitDefaults
) -> None:
    """Check and resolve a verification's `cgee` dict in place (unset parameters take the server's
    `defaults`); no-op for other requests.

    Tokens all choices start with are appended to `input_ids` (the list SGLang goes on with).
    """
    custom = sampling_params.get("custom_params")
    raw = requested(custom)
    if raw is None:
        if isinstance(custom, dict) and isinstance(custom.get(CUSTOM_KEY), dict) and Option.CGEE in custom[CUSTOM_KEY]:
            raise ValueError("custom_params.rksc.cgee must be an object")
        return
    max_new = sampling_params.get("max_new_tokens", 1)
    if max_new != 1:
        raise ValueError(f"a verification generates exactly one token: max_new_tokens must be 1, got {max_new}")

    def encode(text: str) -> list[int]:
        if tokenizer is None:
            raise ValueError("this server has no tokenizer: give cgee.choice_ids instead of cgee.choices")
        return tokenizer.encode(text, add_special_tokens=False)

    ids, common = resolve_choices(raw, encode, model_config.vocab_size)
    if common:
        if not isinstance(input_ids, list):
            raise ValueError("cgee choices with a common start need a tokenized text prompt")
        input_ids.extend(common)
    spec = parse(raw, ids, model_config.num_hidden_layers, defaults, common)
    # A fresh dict: requests of one batch may share theirs.
    sampling_params["custom_params"] = {**custom, CUSTOM_KEY: {**custom[CUSTOM_KEY], Option.CGEE: spec.to_dict()}}
