"""Decode-side reuse without a server: which requests may share a result, and the store's bookkeeping."""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import pytest
from sglang.srt.managers.schedule_batch import FINISH_ABORT, FINISH_LENGTH, Req
from sglang.srt.sampling.sampling_params import SamplingParams

from sglang_rksc.reuse.signature import reuse_key, why_not_reusable
from sglang_rksc.reuse.store import ReuseStore

pytestmark = pytest.mark.usefixtures("sglang_context")

PROMPT = [5, 6, 7, 8]


def make_req(prompt=PROMPT, rid="r", cache_salt=None, extra_key=None, return_logprob=False, **sampling):
    params = {"max_new_tokens": 8, "temperature": 0, **sampling}
    return Req(
        rid,
        "",
        array("q", prompt),
        SamplingParams(**params),
        return_logprob=return_logprob,
        cache_salt=cache_salt,
        extra_key=extra_key,
    )


def test_greedy_and_seeded_requests_are_reusable_sampled_ones_are_not():
    assert why_not_reusable(make_req()) is None
    assert why_not_reusable(make_req(temperature=0.7, sampling_seed=3)) is None
    assert why_not_reusable(make_req(temperature=0.7)) == "sampled without a seed"
    assert why_not_reusable(make_req(return_logprob=True)) == "log-probabilities or hidden states requested"
    assert why_not_reusable(make_req(custom_params={"rksc": {"reuse": False}})) == "opted out"


def test_the_key_separates_everything_that_changes_the_result():
    base = reuse_key(make_req())
    assert base == reuse_key(make_req(rid="other"))  # the request id is not part of it
    assert base != reuse_key(make_req(prompt=[5, 6, 7, 9]))
    assert base != reuse_key(make_req(max_new_tokens=9))
    assert base != reuse_key(make_req(stop=["\n"]))
    assert base != reuse_key(make_req(cache_salt="tenant-b"))
    assert base != reuse_key(make_req(extra_key="lora-x"))
    assert base != reuse_key(make_req(custom_params={"rksc": {"cgee": {"choices": [" yes", " no"]}}}))
    # Marks and the reuse option itself do not change what is generated.
    assert base == reuse_key(make_req(custom_params={"rksc": {"mark": "finished"}}))
    assert reuse_key(make_req(stop_token_ids=[3, 1, 2])) == reuse_key(make_req(stop_token_ids=[2, 1, 3]))
    assert reuse_key(make_req(temperature=0.5)) is None


class FakeNode:
    def __init__(self) -> None:
        self.attached = True


def finished_req(rid="leader", reason=None):
    req = make_req(rid=rid)
    req._rksc_reuse_key = reuse_key(req)  # taken when it was queued, before it generated
    req.output_ids = array("q", [11, 12, 13])
    req.finished_reason = reason or FINISH_LENGTH(length=3)
    req.last_node = FakeNode()
    return req


def test_a_record_lives_as_long_as_its_path():
    store = ReuseStore(lambda node: node.attached)
    req = finished_req()
    store.on_release(req, True)
    record = store.lookup(req._rksc_reuse_key)
    assert record.output_ids == (11, 12, 13) and record.rid == "leader"
    req.last_node.attached = False  # evicted
    assert store.lookup(req._rksc_reuse_key) is None
    assert store.stats.invalidated == 1 and not store.records


def test_an_aborted_request_records_nothing_but_frees_its_followers():
    store = ReuseStore(lambda node: node.attached)
    leader = finished_req(reason=FINISH_ABORT("gone"))
    key = leader._rksc_reuse_key
    store.lead(key, leader)
    follower = make_req(rid="follower")
    store.follow(key, follower)
    store.on_release(leader, True)
    assert store.lookup(key) is None
    assert store.take_ready() == [(key, follower)] and not store.leaders


def test_a_leader_that_finished_without_release_is_found_stale():
    store = ReuseStore(lambda node: True)
    leader = finished_req()
    key = leader._rksc_reuse_key
    store.lead(key, leader)
    store.follow(key, SimpleNamespace())
    assert store.stale_leaders() == [key]
    store.leader_done(key, leader)
    assert store.stale_leaders() == [] and len(store.take_ready()) == 1


def test_the_server_flag():
    from sglang_rksc.config import ConfigError, RkscConfig, split_args

    assert RkscConfig().reuse is False
    rest, config = split_args(["--rksc-reuse", "on", "--port", "1"])
    assert config.reuse is True and rest == ["--port", "1"]
    with pytest.raises(ConfigError, match="expected on or off"):
        split_args(["--rksc-reuse", "maybe"])
