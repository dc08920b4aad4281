"""`gather`: one prompt that lists earlier branches and asks the model to reconcile them (universal
self-consistency, comparing plans), with each branch's text marked as a packet.

On a server with `--rksc-packets on`, each marked branch's KV is copied from where the branch was generated
(its path in the radix tree) and turned to its new position instead of being computed; elsewhere (stock SGLang,
packets off, or `reuse=False`) the same prompt is computed in full, and the result says so.

`put_packets` makes standalone packets, as in the paper: texts that no branch generated (documents, attempts
from elsewhere) computed once each at the start of a prompt of their own, so that later prompts marking them
copy that KV from the tree instead of computing it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sglang_rksc.wire import Meta, Option, meta_entry, with_options

HEADER = "Here are {n} candidate solutions to the problem above."
LABEL = "Solution {i}:"
USC_INSTRUCTION = (
    "Which final answer is the most consistent across these solutions? End with the line 'The answer is <number>.'"
)


@dataclass(frozen=True)
class GatherPrompt:
    text: str
    packets: list[str]  # the branches' texts, as they appear in `text`


@dataclass(frozen=True)
class GatherResult:
    text: str
    meta_info: dict[str, Any]
    packets: dict[str, Any] | None  # the server's `rksc_packets` entry: spans reused, tokens not computed
    note: str | None  # why the prompt was computed in full, when it was
    seconds: float  # the request's wall time, as the client saw it

    @property
    def tokens_not_computed(self) -> int:
        return int((self.packets or {}).get("tokens_not_computed", 0))


def gather_prompt(
    prefix: str,
    branches: Sequence[str],
    *,
    chat_template: Any = None,
    header: str = HEADER,
    label: str = LABEL,
    instruction: str = USC_INSTRUCTION,
) -> GatherPrompt:
    """`prefix` (the shared question, as the branches saw it), then a user turn listing the branches and the
    instruction, then the assistant's turn to answer. Each branch is its own line block, unchanged."""
    if not branches:
        raise ValueError("gather: no branches to gather")
    user, user_end = _role(chat_template, "user")
    assistant, _ = _role(chat_template, "assistant")
    listed = "".join(f"{label.format(i=i)}\n{text}\n\n" for i, text in enumerate(branches, 1))
    body = f"{header.format(n=len(branches))}\n\n{listed}{instruction}"
    return GatherPrompt(prefix + user + body + user_end + assistant, [b for b in branches if b.strip()])


def _role(chat_template: Any, role: str) -> tuple[str, str]:
    if chat_template is None:
        return ("\n", "\n") if role == "user" else ("", "")
    return chat_template.get_prefix_and_suffix(role, [])


def gather(
    state: Any,
    branches: Sequence[str],
    *,
    max_tokens: int,
    temperature: float = 0.0,
    reuse: bool = True,
    **prompt_args: Any,
) -> GatherResult:
    """Ask the model about `branches` after `state`'s text (an SGLang `ProgramState` on a `RuntimeEndpoint`).
    `reuse=False` opts this request out: its prompt is computed in full."""
    executor = state.stream_executor
    endpoint = executor.backend
    prompt = gather_prompt(
        state.text(), branches, chat_template=getattr(endpoint, "chat_template", None), **prompt_args
    )
    sampling: dict[str, Any] = {"max_new_tokens": max_tokens, "temperature": temperature}
    if reuse:
        sampling["custom_params"] = with_options({Option.PACKETS: prompt.packets})
    started = time.perf_counter()
    reply = endpoint._generate_http_request(executor, {"text": prompt.text, "sampling_params": sampling})
    seconds = time.perf_counter() - started
    entry = meta_entry(reply["meta_info"], Meta.PACKETS)
    note = None
    if not reuse:
        note = "packets not asked for: computed in full"
    elif entry is None:
        note = "the server reused no packet (stock SGLang or --rksc-packets off): computed in full"
    return GatherResult(reply["text"], reply["meta_info"], entry, note, seconds)


def put_packets(endpoint: Any, texts: Sequence[str], **request_fields: Any) -> int:
    """Compute each text once as a prompt of its own (no token generated), in the namespace `request_fields`
    name (`extra_key`, `cache_salt`; the later prompts must name the same). `endpoint`: a `RuntimeEndpoint` or
    a server URL. Returns the prompt tokens the server computed for them (when all were cached already, one per
    text: SGLang computes a prompt's last token again to sample from it)."""
    from sglang.utils import http_request

    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("put_packets: give non-empty texts")
    url = endpoint if isinstance(endpoint, str) else endpoint.base_url
    body = {"text": list(texts), "sampling_params": {"max_new_tokens": 0}, **request_fields}
    replies = http_request(url + "/generate", json=body, api_key=getattr(endpoint, "api_key", None)).json()
    if isinstance(replies, dict):  # an error object
        raise RuntimeError(f"put_packets: the server refused the texts: {replies}")
    return sum(r["meta_info"]["prompt_tokens"] - r["meta_info"]["cached_tokens"] for r in replies)
