"""The seam table: every target resolves on the pinned SGLang, a target that moved stops start in one line,
hooks on a shared target install in the table's order, and the cache's feature list is what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from sglang_rksc.config import HeadCompressionSettings, RkscConfig
from sglang_rksc.srt import features, seams

REPO = Path(__file__).resolve().parents[1]
FAKE = seams.Seam("sglang.srt.managers.scheduler.Scheduler.no_such_step", seams.AROUND, "test",
                  "sglang_rksc.srt.server_info:request_level_info")  # fmt: skip


def test_every_seam_resolves_on_the_pinned_sglang():
    seams.check()
    assert len(seams.SEAMS) >= 38 and {s.kind for s in seams.SEAMS} == set(seams.KINDS)


def test_the_pin_is_the_one_pyproject_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"sglang=={seams.SGLANG_PIN}" in project["dependencies"]


def test_a_target_that_moved_is_named_in_one_line():
    with pytest.raises(seams.SeamError) as raised:
        seams.check([*seams.SEAMS, FAKE])
    message = str(raised.value)
    assert "Scheduler.no_such_step" in message and "\n" not in message
    bad_hook = seams.Seam(seams.SEAMS[0].target, seams.AROUND, "test", "sglang_rksc.srt.server_info:nothing")
    with pytest.raises(seams.SeamError, match="hook sglang_rksc.srt.server_info:nothing"):
        seams.check([bad_hook])
    real = seams.SEAMS[0]
    twice = [real, seams.Seam(real.target, seams.AFTER, "test", real.hook)]
    with pytest.raises(seams.SeamError, match="share order 0"):
        seams.check(twice)


def test_another_sglang_release_is_refused(monkeypatch):
    monkeypatch.setattr(seams, "version", lambda name: "0.5.22")
    with pytest.raises(seams.SeamError, match=r"built for SGLang 0\.5\.23, but 0\.5\.22 is installed"):
        seams.check()


def test_a_moved_target_stops_the_plugin_at_start_with_one_line():
    """What SGLang's plugin loader does in every server process, with one target that does not resolve."""
    code = (
        "from sglang_rksc.srt import seams\n"
        f"seams.SEAMS.append(seams.Seam({FAKE.target!r}, seams.AROUND, 'test', {FAKE.hook!r}))\n"
        "from sglang.srt.plugins import load_plugins\n"
        "load_plugins()\n"
        "print('served on')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "served on" not in done.stdout
    ours = [line for line in done.stderr.splitlines() if line.startswith("sglang-rksc:")]
    assert len(ours) == 1 and "Scheduler.no_such_step" in ours[0], done.stderr[-2000:]


def test_hooks_on_a_shared_target_install_innermost_first(monkeypatch):
    """SGLang's registry wraps later registrations around earlier ones: the table's order decides."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    registered: list[tuple[str, object]] = []
    monkeypatch.setattr(HookRegistry, "register", classmethod(lambda cls, t, hook, kind: registered.append((t, hook))))
    monkeypatch.setattr(seams, "_REGISTER", {kind: lambda target, hook: None for kind in seams._REGISTER})
    config = RkscConfig(reuse=True, packets=True, heads=HeadCompressionSettings(sparsity=0.4))
    installed = seams.install(config)
    shared = [s for s in installed if sum(t.target == s.target for t in installed) > 1]
    assert {s.target.rsplit(".", 1)[-1] for s in shared} >= {"_add_request_to_queue", "init_new", "add_one_req"}
    for target in {s.target for s in shared}:
        hooks = [hook for t, hook in registered if t == target]
        expected = [seams.resolve_hook(s.hook) for s in sorted(shared, key=lambda s: s.order) if s.target == target]
        assert hooks == expected, target
    # conditional seams follow the settings
    off = seams.install(RkscConfig())
    assert not any(s.feature in ("heads", "packets") for s in off) and all(s.kind != seams.FRONTEND for s in off)


def test_the_feature_list_builds_features_of_the_names_it_lists():
    """Every entry builds the feature it names, in the list's order (release order: span report first, ASKS
    dedupe last among those that release)."""
    from sglang_rksc.asks.sharing import SemanticSharing
    from sglang_rksc.packets.reuse import PacketReuse
    from sglang_rksc.reuse.store import ReuseStore
    from sglang_rksc.rlkv.cache_windows import HeadWindows
    from sglang_rksc.rsbcm.marks import BranchMarks
    from sglang_rksc.spans.report import SpanReport

    classes = [SpanReport, BranchMarks, ReuseStore, SemanticSharing, HeadWindows, PacketReuse]
    assert [spec.name for spec in features.FEATURES] == [cls.name for cls in classes]
    everything = RkscConfig(reuse=True, span_embeddings=True, packets=True)
    assert len(features.feature_factories(everything)) == 4  # span report, marks, reuse, packets
    assert len(features.feature_factories(RkscConfig())) == 1  # the marks, always


def test_the_architecture_page_lists_exactly_the_table():
    rows = set()
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1].startswith("sglang."):
            rows.add((cells[0], cells[1], cells[2], int(cells[3]), cells[4]))
    assert rows == {(s.feature, s.target, s.kind, s.order, s.hook) for s in seams.SEAMS}
