"""The README and docs/*.md link to files and headings that exist (the front page points into docs/).

A relative link ``[x](docs/usage.md#command-reference)`` must name an existing file and, with a
``#fragment``, a heading of that file (GitHub's anchor rule: lower case, punctuation dropped,
spaces as hyphens), so moving or renaming a section cannot leave the front page pointing nowhere.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchor(heading: str) -> str:
    """GitHub's id of a Markdown heading.

    >>> anchor("CT segmenter: per-label intensity shift (`augment.label_shift`)")
    'ct-segmenter-per-label-intensity-shift-augmentlabel_shift'
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", text), re.M)}


def test_relative_links_name_existing_files_and_headings():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto: ...
                continue
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_front_page_links_to_usage_and_results():
    text = (REPO / "README.md").read_text()
    assert "docs/usage.md" in text and "docs/results.md" in text
