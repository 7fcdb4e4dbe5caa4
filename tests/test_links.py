"""Every relative link in README.md, docs/*.md and the notebooks' markdown points to a file that exists, and a
`#anchor` to a heading of the page it names (GitHub's heading slugs)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def notebook_markdown(nb: Path) -> str:
    cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """The links of `page` (or of `text`, read as if it were `page`: a notebook's markdown) that resolve to no
    file, or to no heading of the page they name."""
    text = FENCE.sub("", page.read_text(encoding="utf-8") if text is None else text)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {dest.name})")
    return bad


def test_slug_follows_githubs_rule():
    assert slug("300 steps: where the curves level off") == "300-steps-where-the-curves-level-off"
    assert slug("Protocol v2 (`kdlib.notebook.PROTOCOL`)") == "protocol-v2-kdlibnotebookprotocol"
    assert slug("Speed and memory (`make bench`)") == "speed-and-memory-make-bench"


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "b.md").write_text("# Real heading\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md) [ok](b.md#real-heading) [gone](missing.md) [bad](b.md#no-such) [web](https://x.org/y)\n"
        "```\n[in a code block](ignored.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "a.md: missing.md (no such file)",
        "a.md: b.md#no-such (no heading #no-such in b.md)",
    ]


def test_readme_and_docs_links_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = [line for page in pages for line in broken_links(page)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_checker_reads_a_notebooks_markdown_relative_to_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Real heading\n", encoding="utf-8")
    nb = tmp_path / "notebooks" / "00_x.ipynb"
    nb.parent.mkdir()
    cells = [{"cell_type": "markdown", "source": ["[ok](../docs/b.md#real-heading) [bad](../docs/b.md#gone)"]},
             {"cell_type": "code", "source": ["# [not a link](nowhere.md)"]}]
    nb.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    assert broken_links(nb, notebook_markdown(nb)) == [
        "notebooks/00_x.ipynb: ../docs/b.md#gone (no heading #gone in b.md)"]


def test_notebook_markdown_links_resolve():
    bad = [line for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))
           for line in broken_links(nb, notebook_markdown(nb))]
    assert not bad, "broken links in notebooks:\n" + "\n".join(bad)
