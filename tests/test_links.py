"""Every relative link in README.md and docs/*.md points to a file that exists, and a `#anchor` to a heading
of the page it names (GitHub's heading slugs)."""

from __future__ import annotations

import re
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


def broken_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
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
    assert slug("300 steps: the verdicts where the curves flatten") == "300-steps-the-verdicts-where-the-curves-flatten"
    assert slug("Protocol v2 (`kdlib.notebook.PROTOCOL`)") == "protocol-v2-kdlibnotebookprotocol"
    assert slug("Speed and memory (`make bench`)") == "speed-and-memory-make-bench"


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
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


def test_notebook_markdown_links_resolve():
    import json

    bad = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        for target in LINK.findall(FENCE.sub("", text)):
            path = target.partition("#")[0]
            if path and not re.match(r"[a-z]+:", target) and not (nb.parent / path).exists():  # relative to notebooks/
                bad.append(f"{nb.name}: {target}")
    assert not bad, "broken links in notebooks:\n" + "\n".join(bad)
