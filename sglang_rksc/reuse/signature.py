"""When a request's result is a function of its inputs, and the key that names that result.

A request may be answered from an earlier identical one only if its output is
determined by what the key holds: greedy (SGLang normalises temperature 0 to
top_k 1) or an explicit sampling seed, and nothing that the key cannot see or
that a replay could not reproduce (log-probabilities, hidden states, LoRA,
embeddings, images, sessions, a custom logit processor, beams, n > 1).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sglang_rksc.wire import CUSTOM_KEY, NEUTRAL_OPTIONS, Option, request_options


def why_not_reusable(req: Any) -> str | None:
    """Why this request must run itself, or None."""
    sp = req.sampling_params
    if request_options(req).get(Option.REUSE) is False:
        return "opted out"
    if getattr(req, "to_finish", None) is not None:
        return "refused before it ran"  # SGLang finishes it with an abort after a one-token prefill
    if sp.top_k != 1 and sp.sampling_seed is None:
        return "sampled without a seed"
    if req.return_logprob or getattr(req, "return_hidden_states", False):
        return "log-probabilities or hidden states requested"
    if getattr(req, "return_routed_experts", False):
        return "routed experts requested"
    if getattr(req, "lora_id", None) is not None:
        return "LoRA"
    if getattr(req, "input_embeds", None) is not None or getattr(req, "multimodal_inputs", None) is not None:
        return "embeddings or multimodal input"
    if getattr(req, "session", None) is not None or getattr(req, "session_id", None) is not None:
        return "session"
    if getattr(req, "custom_logit_processor", None) is not None:
        return "custom logit processor"
    if sp.n != 1 or sp.beam_width is not None:
        return "several outputs"
    if getattr(req, "positional_embed_overrides", None) is not None:
        return "embedding overrides"
    if len(req.output_ids) > 0:
        return "resumed request"
    return None


def _sampling_signature(sp: Any) -> bytes:
    fields = msgspec.structs.asdict(sp)
    custom = dict(fields.get("custom_params") or {})
    options = custom.get(CUSTOM_KEY)
    if isinstance(options, dict):
        options = {k: v for k, v in options.items() if k not in NEUTRAL_OPTIONS}
        if options:
            custom[CUSTOM_KEY] = options
        else:
            del custom[CUSTOM_KEY]
    fields["custom_params"] = custom or None
    for name, value in fields.items():
        if isinstance(value, (set, frozenset)):
            fields[name] = sorted(value)  # a set's order is not part of its meaning
    return msgspec.json.encode(fields, order="sorted")


def reuse_key(req: Any) -> tuple[Any, ...] | None:
    """(namespace, prompt ids, sampling signature), or None when the request is not reusable."""
    if why_not_reusable(req) is not None:
        return None
    return (req.extra_key, req.cache_salt, tuple(req.origin_input_ids), _sampling_signature(req.sampling_params))
