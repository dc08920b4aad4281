"""Programs behind SGLang's router (`sglang-router`): what the frontend does differently there.

The router forwards `/generate`, `/get_model_info` and `/flush_cache` (to every replica), and lists its
replicas at `/workers`; it does not forward `/server_info` or `/set_internal_state`, and its `/generate`
takes one prompt per request (a batch, `"text": [...]`, is refused with a 400). So, when the endpoint is a
router:
- a batched `/generate` of the frontend (`select` scores its choices in one) goes as one request per prompt,
  all at once (`generate_one_by_one`, a frontend seam), and the replies are joined as SGLang joins a batch's;
- what the server runs (`ServerProbe`) is asked of a replica, and branch marks go to every replica
  (`worker_urls`): a replica that does not hold a marked request ignores it;
- the router parses `sampling_params` into its own fields and drops `custom_params`, where our per-request
  options travel (a verification's CGEE spec, a gather's packets, `custom_params.rksc`): such a request goes
  straight to the replica that ran its program's last request (`send_program_key`), else to the first one.
These need the replicas reachable from the program's machine; where they are not, a program runs as against
stock SGLang.

Every request a program's executor sends also carries the program's routing key (`ROUTING_KEY_HEADER`, the
router's own sticky-routing header; a plain server ignores it): the program and its forks share one key, so
the router's `manual` policy keeps a program on one replica while it spreads programs over the replicas, where
`cache_aware` routes by prefix and sends programs that share a long instruction prefix to the same replica.

Whether a URL is a router is asked once per `TTL_S` (the replica list changes when one dies or rejoins).
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TTL_S = 5.0
WORKERS_PATH = "/workers"  # the router's replica list; a plain SGLang server answers 404
BATCH_FIELDS = ("text", "input_ids")  # a list of prompts in either makes a batch
ROUTING_KEY_HEADER = "x-smg-routing-key"  # sglang-router's sticky routing (its `manual` policy)

_program = threading.local()  # the routing key of the program whose executor runs on this thread
_last_replica: dict[str, int] = {}  # a program's routing key -> the port of the replica that ran its last request

_installed = False


class RouterView:
    """The healthy replicas behind a router URL (None: the URL is not a router, or did not answer)."""

    _known: dict[str, tuple[float, list[str] | None]] = {}
    _lock = threading.Lock()
    ttl_s = TTL_S

    @classmethod
    def workers(cls, base_url: str, api_key: str | None = None) -> list[str] | None:
        with cls._lock:
            known = cls._known.get(base_url)
            if known is not None and time.monotonic() - known[0] < cls.ttl_s:
                return known[1]
        urls = _ask_workers(base_url, api_key)
        with cls._lock:
            cls._known[base_url] = (time.monotonic(), urls)
        return urls

    @classmethod
    def forget(cls) -> None:
        with cls._lock:
            cls._known.clear()


def _ask_workers(base_url: str, api_key: str | None) -> list[str] | None:
    from sglang.utils import http_request

    try:
        res = http_request(base_url + WORKERS_PATH, api_key=api_key)
        if res.status_code != 200:
            return None
        listed = res.json().get("workers")
    except Exception:
        return None
    if not isinstance(listed, list):
        return None
    return [w["url"].rstrip("/") for w in listed if isinstance(w, dict) and w.get("url") and w.get("is_healthy", True)]


def worker_urls(endpoint: Any) -> list[str] | None:
    """The replicas behind `endpoint` when it is a router, else None."""
    base_url = getattr(endpoint, "base_url", None)
    if base_url is None:
        return None
    return RouterView.workers(base_url, getattr(endpoint, "api_key", None))


def batch_size(data: dict[str, Any]) -> int | None:
    """How many prompts a `/generate` body holds when it is a batch (None: one prompt)."""
    for name in BATCH_FIELDS:
        value = data.get(name)
        if isinstance(value, list) and value and (name == "text" or isinstance(value[0], list)):
            return len(value)
    return None


def split_batch(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A batched `/generate` body as one body per prompt (the other fields shared, as in SGLang's batch)."""
    size = batch_size(data)
    assert size is not None, "not a batch"
    bodies = []
    for i in range(size):
        body = copy.deepcopy({k: v for k, v in data.items() if k not in BATCH_FIELDS})
        for name in BATCH_FIELDS:
            if isinstance(data.get(name), list):
                body[name] = data[name][i]
        bodies.append(body)
    return bodies


def generate_one_by_one(original: Any, endpoint: Any, s: Any, data: dict[str, Any]) -> Any:
    """AROUND hook on `RuntimeEndpoint._generate_http_request`: behind a router, a batch goes as one request
    per prompt, sent together; the replies come back in order, as a list (what SGLang answers a batch)."""
    if batch_size(data) is None or worker_urls(endpoint) is None:
        return original(endpoint, s, data)
    bodies = split_batch(data)
    key = getattr(_program, "key", None)  # the pool's threads send for the same program

    def send(body: dict[str, Any]) -> Any:
        _program.key = key
        try:
            return original(endpoint, s, body)
        finally:
            _program.key = None

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def program_key(executor: Any) -> str:
    """A program's routing key: a fork's executor shares its parent's arguments (the same dict), so the
    program and all its forks have one key; another program run has its own."""
    return f"{os.getpid():x}-{id(executor.arguments):x}"


def run_with_program_key(original: Any, executor: Any, *args: Any, **kwargs: Any) -> Any:
    """AROUND hook on `StreamExecutor._thread_worker_func`: the executor's thread, which sends all of its
    requests, knows its program's routing key."""
    from sglang_rksc.lang import executors

    executors.track(executor)  # a failed program's executors are told to stop at exit
    _program.key = program_key(executor)
    try:
        return original(executor, *args, **kwargs)
    finally:
        _program.key = None


def send_program_key(
    original: Any,
    url: str,
    json: Any = None,  # noqa: A002 - SGLang's parameter name
    stream: bool = False,
    api_key: str | None = None,
    verify: Any = None,
    method: str | None = None,
) -> Any:
    """AROUND hook on the frontend's `http_request`: on an executor's thread, the request carries its program's
    routing key (SGLang's `http_request` takes no headers: the same POST, with one more)."""
    key = getattr(_program, "key", None)
    if _has_custom_params(json) and url.endswith(GENERATE_PATH):
        url = _replica_for(url[: -len(GENERATE_PATH)], api_key, key) + GENERATE_PATH
    if key is None or stream or verify:
        return original(url, json=json, stream=stream, api_key=api_key, verify=verify, method=method)
    from sglang.utils import HttpResponse

    headers = {"Content-Type": "application/json; charset=utf-8", ROUTING_KEY_HEADER: key}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    body = None if json is None else _dumps(json).encode("utf-8")
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        response = HttpResponse(urllib.request.urlopen(request, data=body))
    except urllib.error.HTTPError as exc:
        return HttpResponse(exc)
    if url.endswith(GENERATE_PATH) and response.status_code == 200 and _behind_router(url, api_key):
        _remember_replica(key, response)
    return response


_dumps = json.dumps
GENERATE_PATH = "/generate"
MAX_PROGRAMS_KEPT = 10_000


def _has_custom_params(body: Any) -> bool:
    params = body.get("sampling_params") if isinstance(body, dict) else None
    return isinstance(params, dict) and "custom_params" in params


def _behind_router(url: str, api_key: str | None) -> bool:
    """Whether a `/generate` URL is a router's (only there is a reply's replica worth remembering)."""
    return bool(RouterView.workers(url[: -len(GENERATE_PATH)], api_key))


def _replica_for(base_url: str, api_key: str | None, key: str | None) -> str:
    """Where a request with `custom_params` goes: `base_url` itself unless it is a router; behind one, the
    replica that ran the program's last request, else the first healthy one."""
    replicas = RouterView.workers(base_url, api_key)
    if not replicas:
        return base_url
    port = _last_replica.get(key) if key is not None else None
    return next((u for u in replicas if port is not None and u.endswith(f":{port}")), replicas[0])


def _remember_replica(key: str, response: Any) -> None:
    """Note which replica ran this program's request (`Meta.SERVER` in the reply; our server sends it)."""
    from sglang_rksc.wire import Meta, meta_entry

    try:
        replies = response.json()
    except ValueError:
        return
    for reply in replies if isinstance(replies, list) else [replies]:
        entry = meta_entry(reply.get("meta_info") if isinstance(reply, dict) else None, Meta.SERVER)
        if entry is not None:
            if len(_last_replica) >= MAX_PROGRAMS_KEPT and key not in _last_replica:
                _last_replica.pop(next(iter(_last_replica)))  # the oldest program: long finished
            _last_replica[key] = int(entry["port"])


def install() -> None:
    """Attach `generate_one_by_one` and the routing key's hooks in this process (frontend seams in `srt.seams`;
    idempotent)."""
    global _installed
    if _installed:
        return
    from sglang_rksc.srt import seams

    seams.install_frontend("router")
    _installed = True
