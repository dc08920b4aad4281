"""The wire contract is one SGLang-free module, and what crosses the boundary is named there once."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from sglang_rksc import wire

SGLANG_FREE = ("sglang_rksc.wire", "sglang_rksc.settings", "sglang_rksc.config", "sglang_rksc.exit.spec")
CHECK = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
server = sorted(m for m in sys.modules if m == "sglang" or m.startswith(("sglang.", "torch")))
assert not server, server
"""


def test_the_contract_and_the_settings_import_without_sglang_or_torch():
    result = subprocess.run([sys.executable, "-c", CHECK, *SGLANG_FREE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_response_key_is_request_level():
    keys = [v for k, v in vars(wire.Meta).items() if not k.startswith("_")]
    assert keys and all(key.startswith(wire.META_PREFIX) for key in keys)
    assert set(wire.NOT_REPLAYED) <= set(keys)


def test_counter_names_come_from_their_shapes():
    assert wire.counter_names(wire.ReuseStats, "replayed") == ("reuse_replayed",)
    assert wire.counter_names(wire.SemanticStats, "semantic_hits") == ("semantic_hits",)
    assert set(wire.MarkStats().as_dict()) == {"marks_" + f.name for f in fields(wire.MarkStats)}
    with pytest.raises(AssertionError, match="no counters"):
        wire.counter_names(wire.ReuseStats, "replyed")


def test_branch_marks_travel_in_keys_and_come_back_whole():
    args = wire.mark_request_args(["a", "b"], "rejected")
    assert wire.is_mark_request(args) and wire.parse_mark_request(args) == (["a", "b"], "rejected")
    for bad in ({"rksc_mark/evil/a": 1}, {"rksc_mark/finished/a": 1, "rksc_mark/rejected/b": 1}):
        with pytest.raises(ValueError, match="rksc_mark"):
            wire.parse_mark_request(bad)
    with pytest.raises(ValueError, match="request ids"):
        wire.mark_request_args(["a/b"], "finished")


def test_entries_are_read_and_written_one_per_request():
    class Req:
        customized_info = None

    req = Req()
    wire.put_meta(req, wire.Meta.SEMANTIC, {"fork": False})
    assert req.customized_info == {wire.Meta.SEMANTIC: [{"fork": False}]}
    assert wire.meta_entry(req.customized_info, wire.Meta.SEMANTIC) == {"fork": False}
    assert wire.meta_entry({}, wire.Meta.CGEE) is None and wire.meta_entry(None, wire.Meta.SPAN) is None
    assert wire.rksc_state({"internal_states": [{"rksc": {"backend": "rksc"}}]}) == {"backend": "rksc"}
    assert wire.rksc_state({}) is None
