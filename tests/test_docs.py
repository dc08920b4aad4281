"""The documentation: the MkDocs site builds in strict mode, the README stays short and its links resolve,
and every page under docs/ is in the nav."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_LINES = 250

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    kept, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def relative_links(text: str) -> list[str]:
    """Markdown link targets that are neither web addresses nor anchors in the same page."""
    targets = LINK.findall(without_code(text))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def heading_anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, as MkDocs' toc extension makes them."""
    from markdown.extensions.toc import slugify

    anchors = set()
    for line in without_code(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            anchors.add(slugify(m.group(1), "-"))
    return anchors


def nav_pages(node) -> set[str]:
    """Every page path named in an mkdocs.yml nav (a list of strings and one-key mappings, nested)."""
    if isinstance(node, str):
        return set() if re.match(r"^[a-z]+://", node) else {node}
    if isinstance(node, list):
        return set().union(*(nav_pages(item) for item in node)) if node else set()
    if isinstance(node, dict):
        return set().union(*(nav_pages(value) for value in node.values())) if node else set()
    return set()


def test_the_site_builds_in_strict_mode(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"


def test_every_relative_link_in_the_readme_resolves():
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links, "the README links to its docs pages"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (README.parent / path).resolve()
        if not target.exists():
            broken.append(f"{link}: no file {path}")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
            broken.append(f"{link}: no heading with the anchor #{anchor} in {path}")
    assert not broken, "broken links in README.md:\n" + "\n".join(broken)


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    docs_dir = REPO / config.get("docs_dir", "docs")
    assert docs_dir == DOCS
    in_nav = nav_pages(config.get("nav"))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages, "docs/ holds the pages"
    missing = sorted(pages - in_nav)
    assert not missing, f"pages under docs/ that the nav in mkdocs.yml does not reach: {missing}"
    absent = sorted(in_nav - pages)
    assert not absent, f"nav entries in mkdocs.yml with no page under docs/: {absent}"


@pytest.mark.parametrize("path", ["README.md", "docs/mechanisms/rlkv.md", "docs/architecture.md"])
def test_the_docs_say_asks_heads_and_packets_compose(path):
    assert "--rksc-semantic on --rksc-head-compression 0.4 --rksc-packets on" in (REPO / path).read_text()
