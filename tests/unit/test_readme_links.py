"""The README's relative links resolve: each names a file that exists and, into the user guide
(docs/), a heading's anchor as MkDocs makes it. The guide's own links are checked by its
strict build (`./run check`)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), with an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, whose links Markdown renders."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def links(text: str) -> list[str]:
    """Every link target of a Markdown text, leaving out code blocks and code spans."""
    found: list[str] = []
    for line in prose_lines(text):
        found += LINK.findall(CODE_SPAN.sub("", line))
    return found


def slugify(heading: str) -> str:
    """A heading's id as Python-Markdown's toc extension (MkDocs' default) makes it, from the
    heading's text without its Markdown marks."""
    text = CODE_SPAN.sub(lambda m: m.group(2).strip(), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link shows its text
    text = re.sub(r"\*{1,3}(\S(?:.*?\S)?)\*{1,3}", r"\1", text)  # emphasis
    # _ marks emphasis only at word edges: worker/_slots.py keeps its underscore.
    text = re.sub(r"(?<!\w)_{1,3}(\S(?:.*?\S)?)_{1,3}(?!\w)", r"\1", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The ids of a page's headings; a repeated id gets _1, _2, ... as in Python-Markdown."""
    ids: set[str] = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slugify(match.group(2))
        slug, n = base, 0
        while slug in ids:
            n += 1
            slug = f"{base}_{n}"
        ids.add(slug)
    return ids


def relative_links() -> list[str]:
    return [t for t in links(README.read_text(encoding="utf-8"))
            if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t) and not t.startswith("#")]


def test_slugify_follows_markdown() -> None:
    assert slugify("`share(obj) -> Shared[T]`") == "shareobj-sharedt"
    assert slugify("Waiting, deadlock and errors") == "waiting-deadlock-and-errors"
    assert slugify("`distrib status`") == "distrib-status"
    assert slugify("concurrent.futures, joblib and asyncio") == "concurrentfutures-joblib-and-asyncio"
    assert slugify("Sharing a worker (worker/_slots.py, *fair*)") == "sharing-a-worker-worker_slotspy-fair"


def test_links_skip_code() -> None:
    text = "see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n![d](d.png \"title\")\n"
    assert links(text) == ["a.md", "d.png"]


def test_readme_links_into_the_guide() -> None:
    guide = [t for t in relative_links() if t.startswith("docs/") and ".md" in t]
    assert guide, "the README links into the user guide"


@pytest.mark.parametrize("target", sorted(set(relative_links())))
def test_readme_link_resolves(target: str) -> None:
    path, _, anchor = target.partition("#")
    file = (README.parent / path).resolve()
    assert file.exists(), f"README.md links to {path}, which does not exist"
    if anchor and file.suffix == ".md" and file.is_relative_to(DOCS):
        assert anchor in anchors(file), (
            f"README.md links to {target}, but {path} has no heading with that anchor "
            f"(it has: {', '.join(sorted(anchors(file)))})")
