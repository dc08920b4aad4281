"""The wire contract: every name and shape that crosses the HTTP boundary between an sglang-rksc
server and its clients (the frontend primitives, the programs, the benchmarks). No SGLang import,
so both sides use it.

- Request options: `sampling_params.custom_params["rksc"]`, a JSON object of `Option`s.
- Response entries: request-level `meta_info` keys (`Meta`), each `[entry]` (one per request).
- Branch marks: `/set_internal_state` keys `rksc_mark/<mark>/<rid>` (values must be numbers).
- Server state: `/server_info` -> `internal_states[0]["rksc"]`, in `Section`s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypedDict

PLUGIN_NAME = "rksc"  # the `sglang.srt.plugins` entry point
BACKEND_NAME = "rksc"  # --radix-cache-backend
EVICTION_POLICY = "rsbcm"  # --radix-eviction-policy that reads branch marks

# ---------------------------------------------------------------- request options

CUSTOM_KEY = "rksc"


class Option:
    SEMANTIC = "semantic"  # false: no semantic sharing (ASKS) for this request
    FORK = "fork"  # false: no semantic fork at admission
    REUSE = "reuse"  # false: no decode-side reuse
    MARK = "mark"  # one of MARKS: mark the request's own branch when it is released
    CGEE = "cgee"  # an object: this request is a verification (checked in depth by sglang_rksc.exit)
    PACKETS = "packets"  # texts: spans of the prompt whose cached KV may be reused (--rksc-packets on)
    ADAPTER = "adapter"  # false: reused packets get no adapter soft tokens (plain reuse)
    DRAFTS = "drafts"  # false: no drafted tokens for this request (--rksc-drafts on)


BOOL_OPTIONS = (Option.SEMANTIC, Option.FORK, Option.REUSE, Option.ADAPTER, Option.DRAFTS)
OPTIONS = (*BOOL_OPTIONS, Option.MARK, Option.CGEE, Option.PACKETS)
# Options that change nothing about what is generated (decode-side reuse keys ignore them).
NEUTRAL_OPTIONS = (Option.MARK, Option.REUSE, Option.DRAFTS)
MARKS = ("rejected", "finished")  # a branch mark, strongest first
MAX_PACKETS = 64  # spans one request may mark
MAX_PACKET_CHARS = 65536


def check_custom_params(custom_params: Any) -> None:
    """Raise ValueError, naming the key, unless `custom_params` and its `rksc` options are well formed."""
    if custom_params is None:
        return
    if not isinstance(custom_params, dict):
        raise ValueError(f"sampling_params.custom_params must be an object, got {type(custom_params).__name__}")
    if CUSTOM_KEY not in custom_params:
        return
    options = custom_params[CUSTOM_KEY]
    where = f"custom_params.{CUSTOM_KEY}"
    if not isinstance(options, dict):
        raise ValueError(f"{where} must be an object of options ({', '.join(OPTIONS)}), got {options!r:.80}")
    for key, value in options.items():
        if key in BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{key} must be true or false, got {value!r:.80}")
        elif key == Option.MARK:
            if not isinstance(value, str) or value not in MARKS:
                raise ValueError(f"{where}.mark must be one of {', '.join(MARKS)}, got {value!r:.80}")
        elif key == Option.CGEE:
            if not isinstance(value, dict):
                raise ValueError(f"{where}.cgee must be an object, got {value!r:.80}")
        elif key == Option.PACKETS:
            _check_packets(value, f"{where}.packets")
        else:
            raise ValueError(f"{where} has an unknown option {key!r:.80} (known: {', '.join(OPTIONS)})")


def _check_packets(value: Any, where: str) -> None:
    if not isinstance(value, list) or len(value) > MAX_PACKETS:
        raise ValueError(f"{where} must be a list of at most {MAX_PACKETS} texts, got {value!r:.80}")
    for text in value:
        if not isinstance(text, str) or not text or len(text) > MAX_PACKET_CHARS:
            raise ValueError(
                f"{where} must hold non-empty texts of at most {MAX_PACKET_CHARS} characters, got {text!r:.80}"
            )


def options_of(custom_params: Any) -> dict[str, Any]:
    """The `rksc` options in `custom_params` (anything malformed counts as none: the door refuses it)."""
    options = custom_params.get(CUSTOM_KEY) if isinstance(custom_params, dict) else None
    return options if isinstance(options, dict) else {}


def request_options(req: Any) -> dict[str, Any]:
    """A server-side request's `rksc` options."""
    return options_of(getattr(req.sampling_params, "custom_params", None))


def with_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """`custom_params` carrying these options."""
    return {CUSTOM_KEY: dict(options)}


# ---------------------------------------------------------------- response entries

META_PREFIX = "rksc_"  # every key of ours in meta_info: SGLang emits them once per request


class Meta:
    SEMANTIC = "rksc_semantic"  # SemanticEntry: whether ASKS forked the request
    CGEE = "rksc_cgee"  # CgeeEntry: the verdict of a verification
    SPAN = "rksc_span"  # SpanEntry: the output's pooled hidden states
    REUSE = "rksc_reuse"  # ReuseEntry: the result was replayed or coalesced
    PACKETS = "rksc_packets"  # PacketEntry: which marked spans took cached KV instead of being computed
    DRAFTS = "rksc_drafts"  # DraftEntry: verify steps, tokens drafted and accepted by source
    SERVER = "rksc_server"  # {"host", "port"}: the server that ran the request (replicas behind a router)


# Entries that say how the original request ran, not what it produced: a replay does not repeat them.
NOT_REPLAYED = (Meta.REUSE, Meta.SEMANTIC, Meta.PACKETS, Meta.DRAFTS)


class SemanticEntry(TypedDict, total=False):
    fork: bool  # a new fork (false for a follow-up, which repeats its branch's fork)
    skipped: str  # why the request could not fork
    source: str  # "alias" or "probe" (a new fork), "followup" (a forked branch's later request)
    similarity: float
    fork_at: int
    replaced_tokens: int
    donor_tokens: int
    reused_tokens: int
    prompt_tokens_served: int


class PacketEntry(TypedDict, total=False):
    reused: list[dict[str, int]]  # {"start", "end"}: prompt positions; "from": the cached run's position
    missed: int  # marked spans found in the prompt but not in the cache (computed)
    tokens_not_computed: int
    soft_tokens: int  # the adapter's header and trailer tokens put into the prompt (computed; 0: plain reuse)


class CgeeEntry(TypedDict, total=False):
    num_layers: int
    layers_run: int
    verdict_index: int
    probs: list[float]
    exit_layer: int | None
    early_exit: bool
    stopped_early: bool
    full_verdict_index: int | None  # audited calls
    profile: list[list[float]]  # audited calls: the distribution after every layer
    first_checked_layer: int
    seconds: float  # this call's share of its batch's forward


class SpanEntry(TypedDict):
    vector: str  # base64 of little-endian float16 values (sglang_rksc.cache.span_vector)
    dtype: str
    tokens: int


class DraftEntry(TypedDict, total=False):
    verify_steps: int  # decode steps the request took (each one verify forward)
    drafted: dict[str, int]  # drafted tokens by source (self, branch, other)
    accepted: dict[str, int]  # ... of which accepted


class ReuseEntry(TypedDict, total=False):
    replayed: bool
    coalesced: bool
    source_rid: str
    tokens: int


def meta_entry(meta_info: Mapping[str, Any] | None, key: str) -> dict[str, Any] | None:
    """A request-level entry of ours from a generation's meta_info (None when the server sent none)."""
    entries = (meta_info or {}).get(key) or [None]
    return entries[0]


def put_meta(req: Any, key: str, entry: Mapping[str, Any]) -> None:
    """Attach an entry to a server-side request's response (SGLang's request-level customized info)."""
    if req.customized_info is None:
        req.customized_info = {}
    req.customized_info[key] = [dict(entry)]


# ---------------------------------------------------------------- branch marks

MARK_KEY = "rksc_mark"


def mark_request_args(rids: Sequence[str], mark: str) -> dict[str, int]:
    """The `server_args` of a `/set_internal_state` call marking `rids` (its values must be
    numbers, so the mark and the rids travel in the keys)."""
    if not isinstance(mark, str) or mark not in MARKS:
        raise ValueError(f"mark must be one of {', '.join(MARKS)}, got {mark!r}")
    bad = [r for r in rids if not isinstance(r, str) or not r or "/" in r]
    if bad or not rids:
        raise ValueError(f"request ids must be non-empty strings without '/', got {list(rids)!r}")
    return {f"{MARK_KEY}/{mark}/{rid}": 1 for rid in rids}


def is_mark_request(server_args: Mapping[str, Any]) -> bool:
    return any(isinstance(k, str) and k.startswith(MARK_KEY + "/") for k in server_args)


def parse_mark_request(server_args: Mapping[str, Any]) -> tuple[list[str], str]:
    """(rids, mark) of a `/set_internal_state` payload made by `mark_request_args`; ValueError if bad."""
    rids, marks = [], set()
    for key in server_args:
        prefix, _, rest = key.partition("/")
        mark, _, rid = rest.partition("/")
        if prefix != MARK_KEY or mark not in MARKS or not rid or "/" in rid:
            raise ValueError(f"{MARK_KEY}: bad key {key!r} (expected {MARK_KEY}/<{'|'.join(MARKS)}>/<rid>)")
        marks.add(mark)
        rids.append(rid)
    if len(marks) != 1:
        raise ValueError(f"{MARK_KEY}: one mark per call, got {', '.join(sorted(marks))}")
    return rids, marks.pop()


# ---------------------------------------------------------------- server state

INTERNAL_STATE_KEY = "rksc"


class Section:
    """Parts of `internal_states[0]["rksc"]` beside `backend`, `impl`, `eviction_policy`, ... ."""

    COUNTERS = "counters"  # forward passes: prefill tokens, decode steps and rows, seconds
    FAILURES = "failures"  # forwards that failed and were contained
    SEMANTIC = "stats"  # ASKS: admissions, forks by source, dedupes, slots freed
    EVICTION = "eviction"  # evicted tokens by mark, marks received
    REUSE = "reuse"  # replayed, coalesced, tokens not generated
    HEADS = "head_compression"  # RLKV: heads compressed, bytes per token, token and window slots
    PACKETS = "packets"  # KV Packet: requests with marked spans, spans reused and missed, tokens not computed
    DRAFTS = "drafts"  # drafts: verify steps, tokens drafted and accepted by source, the draft length chosen
    AUDITS = "audits"  # audits: requests seen and audited, records and positions written, the log's path


def rksc_state(server_info: Mapping[str, Any]) -> dict[str, Any] | None:
    """Our state in a `/server_info` answer (None: a server without the plugin)."""
    states = server_info.get("internal_states") or [{}]
    return (states[0] or {}).get(INTERNAL_STATE_KEY)


# ---------------------------------------------------------------- counters in /server_info
# The shapes of the sections' counters: the server fills them in, clients read them by these names.


@dataclass
class ForwardCounters:
    """Section.COUNTERS: the scheduler's forward passes (SGLang's Prometheus metrics count requests and
    tokens, not forwards). Seconds are host wall times of `Scheduler.run_batch`: meaningful where a batch
    runs synchronously, as on the CPU; with the overlap scheduler on a GPU they only time the launch."""

    prefill_batches: int = 0
    prefill_tokens: int = 0  # prompt tokens computed (not served from the cache)
    prefill_seconds: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0  # requests summed over decode steps: rows / steps = mean decode batch
    decode_seconds: float = 0.0
    capture_prefill_seconds: float = 0.0  # spent writing hidden states into the slot store
    capture_decode_seconds: float = 0.0
    # Decode steps by batch size (rows): what a cost model needs to price the run's decode.
    decode_steps_by_batch: dict[int, int] = field(default_factory=dict)
    # Sampled after every forward: KV held by running requests and locked paths (not the evictable
    # cache), and requests waiting for admission (in a memory-bound server, waiting for memory).
    forwards_sampled: int = 0
    kv_in_use_sum: float = 0.0
    kv_in_use_max: int = 0
    kv_bytes_in_use_sum: float = 0.0  # the same in bytes, plus the window slots taken under head compression
    kv_bytes_in_use_max: int = 0
    running_sum: float = 0.0  # requests in the running batch (in flight)
    running_max: int = 0
    waiting_sum: float = 0.0
    waiting_max: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DraftStats:
    """Section.DRAFTS: what the drafts did (`--rksc-drafts on`)."""

    verify_steps: int = 0  # decode steps (each a verify forward)
    rows: int = 0  # request rows summed over them
    rows_drafted: int = 0  # ... that carried at least one drafted token
    tokens_emitted: int = 0  # tokens the rows produced: accepted drafts and one model token each
    drafted: dict[str, int] = field(default_factory=dict)  # by source
    accepted: dict[str, int] = field(default_factory=dict)
    # accepted drafts per drafted row, by source: {source: {accepted: rows}}
    accepted_histogram: dict[str, dict[int, int]] = field(default_factory=dict)
    steps_by_shape: dict[str, int] = field(default_factory=dict)  # "ROWSxTOKENS" -> steps: the GPU projection
    verify_seconds: float = 0.0
    store_tokens: int = 0
    store_evicted_tokens: int = 0
    length: dict[str, Any] = field(default_factory=dict)  # the draft-length choice: profile, rates, widths

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FailureStats:
    """Section.FAILURES: forwards that raised and were contained (their batches aborted)."""

    failed_batches: int = 0
    aborted_requests: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SemanticStats:
    """Section.SEMANTIC: what ASKS did."""

    admissions: int = 0  # requests checked at admission
    exact_hit_tokens: int = 0  # tokens matched exactly at admission, before any fork
    forks_alias: int = 0
    forks_probe: int = 0
    followups_hit: int = 0  # later requests of a forked branch, rewritten the same way (not new forks)
    followups_missed: int = 0  # ... whose donor path was gone: computed in full
    forks_unreachable: int = 0  # planned forks not made: the request could not continue from the donor's end
    tokens_reused: int = 0  # prompt tokens served beyond the exact match thanks to a fork
    tokens_replaced: int = 0  # request tokens replaced by donor tokens
    dedupes: int = 0
    slots_freed: int = 0  # KV slots freed by dedupe

    @property
    def semantic_hits(self) -> int:
        return self.forks_alias + self.forks_probe

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "semantic_hits": self.semantic_hits}


@dataclass
class EvictionStats:
    """Section.EVICTION (with MarkStats): what eviction freed, by mark, in any eviction policy."""

    evictions: int = 0  # calls that freed something
    evicted_tokens: int = 0
    evicted_rejected: int = 0  # ... of which marked rejected
    evicted_finished: int = 0
    evicted_open: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class MarkStats:
    """Section.EVICTION, prefixed `marks_`: the branch marks received."""

    requests_marked: int = 0
    requests_unknown: int = 0  # never seen, or forgotten
    requests_gone: int = 0  # their path was evicted or deduplicated before the mark came
    nodes_marked: int = 0
    tokens_marked: int = 0

    PREFIX: ClassVar[str] = "marks_"

    def as_dict(self) -> dict[str, int]:
        return {self.PREFIX + k: v for k, v in asdict(self).items()}


@dataclass
class ReuseStats:
    """Section.REUSE, prefixed `reuse_` (beside `on`): decode-side reuse."""

    recorded: int = 0
    replayed: int = 0  # answered from a record, after their twin finished
    coalesced: int = 0  # waited for a running twin instead of running
    verdicts_reused: int = 0  # of the replayed and coalesced: verifications (CGEE)
    tokens_not_generated: int = 0
    invalidated: int = 0  # records whose path was evicted before they were asked for

    PREFIX: ClassVar[str] = "reuse_"

    def as_dict(self) -> dict[str, int]:
        return {self.PREFIX + k: v for k, v in asdict(self).items()}


@dataclass
class PacketStats:
    """Section.PACKETS, prefixed `packets_` (beside `on`): prompt spans served from other paths' KV."""

    requests: int = 0  # prefill rounds of requests that marked spans
    spans_reused: int = 0
    spans_missed: int = 0
    tokens_not_computed: int = 0
    soft_tokens: int = 0  # adapter tokens put into prompts
    failures: int = 0  # prefill rounds whose copy failed (computed in full), requests left without soft tokens
    window_tokens_copied: int = 0  # under head compression: copied positions whose compressed heads came along

    PREFIX: ClassVar[str] = "packets_"

    def as_dict(self) -> dict[str, int]:
        return {self.PREFIX + k: v for k, v in asdict(self).items()}


def counter_names(shape: type, *names: str) -> tuple[str, ...]:
    """The keys under which these counters of `shape` appear in `/server_info` (a misspelt one fails)."""
    known = {f.name for f in fields(shape)} | {n for n in dir(shape) if isinstance(getattr(shape, n), property)}
    missing = [n for n in names if n not in known]
    assert not missing, f"{shape.__name__} has no counters {missing}"
    return tuple(getattr(shape, "PREFIX", "") + n for n in names)
