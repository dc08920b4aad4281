"""`verify`: a verification step of SGLang's frontend language, with CGEE.

    from sglang_rksc import verify
    s += sgl.gen("answer", max_tokens=64, return_logprob=True, top_logprobs_num=2)
    s += "Is this correct? Answer yes or no. Answer:"
    s += verify("ok", candidate="answer", choices=[" yes", " no"])

`verify` is an `SglSelect` whose `choices_method` carries the CGEE parameters, so
it works wherever a `select` does (`run`, `run_batch`, `fork`, tracing). Through a
`sgl.RuntimeEndpoint`, writing a `verify` wraps `RuntimeEndpoint.select` (with
SGLang's hook registry, once per process) so that a verification
1. is skipped, at no server call, when the candidate's generation was confident
   (`Gate`); the verdict is then the accepting choice (`accept`, default the first);
2. otherwise is one `/generate` call of one token, marked for the server's layer exit,
   whose verdict is the most probable choice at the exit layer.
Against a server without the sglang-rksc plugin, and on any other backend, it is an
ordinary full `select` and its meta info says so. The value is the verdict; the meta
info (`state.get_meta_info(name)`) holds `skipped`, `confidence`, `score` (the
probability of the accepting choice), `exit_layer`, `layers_run`, `num_layers`.
With `audit=True` nothing is skipped or cut short in effect: the server runs every
layer and reports the full-depth verdict (`full_verdict`) beside the CGEE one.
With `threshold=t` the verdict is the accepting choice when its probability (`score`)
is at least t, else the most probable other choice (`thresholded`): a model whose
verifier always prefers "yes" still ranks right answers above wrong ones by P(yes),
and a threshold calibrated per model keeps that signal in the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sglang.lang.choices import ChoicesDecision, ChoicesSamplingMethod, token_length_normalized
from sglang.lang.ir import SglSelect

from sglang_rksc.exit.spec import CALL_PARAMS, check_call_params
from sglang_rksc.lang.gate import Confidence, Gate, confidence_of
from sglang_rksc.lang.server_probe import ServerProbe
from sglang_rksc.wire import Meta, Option, meta_entry, with_options


@dataclass(frozen=True)
class VerifyMethod(ChoicesSamplingMethod):
    """The parameters of one `verify`; as a choices method it is SGLang's own select."""

    candidate: str | None
    gate: Gate | None
    early_exit: bool
    accept: int
    audit: bool
    exit_params: dict[str, Any] = field(default_factory=dict)  # theta, eps, k, min_layer overrides
    threshold: float | None = None  # on the accepting choice's probability; None: the most probable choice

    def __call__(self, **kwargs: Any) -> ChoicesDecision:
        decision = token_length_normalized(**kwargs)
        return _plain_decision(kwargs["choices"], decision, self, note="backend without CGEE: full select")

    def __hash__(self) -> int:
        return id(self)


def verify(
    name: str | None = None,
    choices: list[str] | None = None,
    *,
    candidate: str | None = None,
    gate: Gate | bool | None = True,
    early_exit: bool = True,
    accept: int = 0,
    audit: bool = False,
    threshold: float | None = None,
    **exit_params: float,
) -> SglSelect:
    """A verification of the variable `candidate` (see the module docs).

    `gate=True` uses RKSC's thresholds (`Gate()`), a `Gate` sets them, False/None never skips.
    `exit_params` override the server's exit rule for this call: any of `sglang_rksc.exit.spec.CALL_PARAMS`
    (`theta`, `eps`, `k`, `min_layer`). Writing the first `verify` of a process wraps SGLang's
    `RuntimeEndpoint.select` (see `install`).
    """
    install()
    if name is not None and not isinstance(name, str):
        raise ValueError(f"verify: name must be a string, got {name!r:.80}")
    if isinstance(choices, str) or (choices is not None and not isinstance(choices, (list, tuple))):
        raise ValueError(f"verify: choices must be a list of strings, got {choices!r:.80}")
    choices = list(choices if choices is not None else [" yes", " no"])
    if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"verify needs at least two non-empty choices, got {choices!r}")
    if len(set(choices)) != len(choices):
        raise ValueError(f"verify: choices must be distinct, got {choices!r}")
    if candidate is not None and not isinstance(candidate, str):
        raise ValueError(f"verify: candidate must be a variable name, got {candidate!r:.80}")
    for flag, value in (("early_exit", early_exit), ("audit", audit)):
        if not isinstance(value, bool):
            raise ValueError(f"verify: {flag} must be True or False, got {value!r:.80}")
    if isinstance(accept, bool) or not isinstance(accept, int) or not 0 <= accept < len(choices):
        raise ValueError(f"verify: accept must index a choice (0..{len(choices) - 1}), got {accept!r}")
    if gate is True:
        gate = Gate()
    elif gate is False:
        gate = None
    elif gate is not None and not isinstance(gate, Gate):
        raise ValueError(f"verify: gate must be a Gate, True or False, got {gate!r}")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0
    ):
        raise ValueError(f"verify: threshold must be a probability in [0, 1], got {threshold!r:.80}")
    if gate is not None and candidate is None:
        raise ValueError("verify: a gate needs the candidate's variable name (candidate=...)")
    unknown = sorted(set(exit_params) - set(CALL_PARAMS))
    if unknown:
        raise ValueError(f"verify: unknown parameters {', '.join(unknown)} (exit rule: {', '.join(CALL_PARAMS)})")
    overrides = {key: value for key, value in exit_params.items() if value is not None}
    # The model-independent checks now; the server checks the rest (min_layer within the depth).
    check_call_params(overrides)
    method = VerifyMethod(
        candidate=candidate,
        gate=gate,
        early_exit=early_exit,
        accept=accept,
        audit=audit,
        exit_params=overrides,
        threshold=None if threshold is None else float(threshold),
    )
    return SglSelect(name, choices, 0.0, method)


def thresholded(probs: Sequence[float], accept: int, threshold: float | None) -> int:
    """The verdict's index: `accept` when its probability reaches `threshold`, else the most probable
    other choice; without a threshold, the most probable choice."""
    if threshold is None:
        return max(range(len(probs)), key=probs.__getitem__)
    if probs[accept] >= threshold:
        return accept
    return max((i for i in range(len(probs)) if i != accept), key=probs.__getitem__)


def _plain_decision(
    choices: list[str], decision: ChoicesDecision, method: VerifyMethod, note: str, confidence: Any = None
) -> ChoicesDecision:
    """A full select as `verify` reports it: the score from select's choice distribution, and the verdict
    thresholded on it when the call has a threshold."""
    meta = dict(decision.meta_info or {})
    probs = select_probabilities(meta, len(choices))
    meta.update(
        cgee=False,
        skipped=False,
        confidence=confidence,
        score=None if probs is None else probs[method.accept],
        exit_layer=None,
        layers_run=None,
        num_layers=None,
        note=note,
    )
    if method.threshold is None or probs is None:
        return ChoicesDecision(decision.decision, meta)
    return ChoicesDecision(choices[thresholded(probs, method.accept, method.threshold)], meta)


def select_probabilities(select_meta: Mapping[str, Any], count: int) -> list[float] | None:
    """A select's choice distribution: the softmax of each choice's summed token logprobs, so P(choice | one
    of the choices), the quantity `verify` scores. Not SGLang's length-normalised logprobs: those average the
    choice's tokens with the prompt's last one (SGLang's token healing), which for one-token choices halves the
    log-odds (P(yes) 0.95 reads as 0.81). The prompt's tokens are the same in every choice and cancel here."""
    per_choice = select_meta.get("input_token_logprobs") or []
    if len(per_choice) != count:
        return None
    sums = [sum(float(entry[0]) for entry in tokens if entry[0] is not None) for tokens in per_choice]
    top = max(sums)
    weights = [math.exp(total - top) for total in sums]
    return [w / sum(weights) for w in weights]


def _candidate_confidence(s: Any, method: VerifyMethod) -> Confidence | None:
    if method.candidate is None:
        return None
    meta = s.get_meta_info(method.candidate) or {}
    return confidence_of(meta.get("output_top_logprobs"))


# The server's accounting of the call, kept in the verdict's meta so programs can count verification tokens.
_TOKEN_FIELDS = ("id", "prompt_tokens", "cached_tokens", "completion_tokens")


def _verify_on_server(
    endpoint: Any, s: Any, choices: list[str], method: VerifyMethod
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server's CGEE entry for this call, and its token accounting."""
    params: dict[str, Any] = {"choices": choices, "early_exit": method.early_exit, **method.exit_params}
    if method.audit:
        params["record"] = True
    data = {
        "text": s.text_,
        "sampling_params": {
            "max_new_tokens": 1,
            "temperature": 0,
            "custom_params": with_options({Option.CGEE: params}),
        },
    }
    obj = endpoint._generate_http_request(s, data)
    info = meta_entry(obj["meta_info"], Meta.CGEE)
    if info is None:
        raise RuntimeError("the server did not report a CGEE verdict (is it running sglang-rksc's plugin?)")
    return info, {k: obj["meta_info"][k] for k in _TOKEN_FIELDS if k in obj["meta_info"]}


def select_with_verify(
    original: Any, endpoint: Any, s: Any, choices: list[str], temperature: float, choices_method: Any
) -> ChoicesDecision:
    """AROUND hook on `RuntimeEndpoint.select`: CGEE for `verify`, SGLang's select for the rest."""
    if not isinstance(choices_method, VerifyMethod):
        return original(endpoint, s, choices, temperature, choices_method)
    method = choices_method
    confidence = _candidate_confidence(s, method)
    skip = method.gate is not None and confidence is not None and method.gate.skips(confidence)
    conf = None if confidence is None else {"top": confidence.top, "margin": confidence.margin}
    if skip and not method.audit:
        # The gate decides: no server call at all.
        meta = {"cgee": True, "skipped": True, "confidence": conf, "score": confidence.top, "note": None}
        meta.update(exit_layer=None, layers_run=0, num_layers=None)
        return ChoicesDecision(choices[method.accept], meta)
    if not ServerProbe.has_plugin(endpoint):
        decision = original(endpoint, s, choices, temperature, token_length_normalized)
        return _plain_decision(choices, decision, method, note="server without the sglang-rksc plugin", confidence=conf)
    meta: dict[str, Any] = {"cgee": True, "skipped": skip, "confidence": conf, "note": None}
    info, tokens = _verify_on_server(endpoint, s, choices, method)
    verdict = info["verdict_index"]
    if method.threshold is not None:
        verdict = thresholded(info["probs"], method.accept, method.threshold)
    meta.update(
        **tokens,
        score=info["probs"][method.accept],
        probs=info["probs"],
        exit_layer=info.get("exit_layer"),
        layers_run=info["layers_run"],
        num_layers=info["num_layers"],
        server_verdict=choices[verdict],
        server_seconds=info.get("seconds"),
        threshold=method.threshold,
    )
    if method.audit:
        full = info.get("full_verdict_index")
        profile = info.get("profile")
        if method.threshold is not None and profile:  # the full-depth verdict by the same rule
            full = thresholded(profile[-1], method.accept, method.threshold)
        meta["full_verdict"] = None if full is None else choices[full]
        meta["profile"] = profile
    if skip:  # audited skip: the gate's verdict stands, the server's is on record
        return ChoicesDecision(choices[method.accept], {**meta, "score": confidence.top})
    return ChoicesDecision(choices[verdict], meta)


_installed = False


def install() -> None:
    """Wrap `RuntimeEndpoint.select` in this process (`srt.seams`, a frontend seam; idempotent), end executors
    without the lock that can hang it (`lang.executors`) and split batches behind a router (`lang.router`).

    Done when a program first writes a `verify`, not on import: a process that never verifies
    keeps SGLang's select as it is."""
    global _installed
    if _installed:
        return
    from sglang_rksc.lang import executors, router
    from sglang_rksc.srt import seams

    seams.install_frontend("cgee")
    executors.install()  # a program that verifies runs threads: its executors get the end that cannot hang
    router.install()  # its choices are scored in a batch, which a router takes one prompt at a time
    _installed = True
