"""Run reports for people: one document written as Markdown and as self-contained-folder HTML.

A :class:`Report` is a list of blocks (headings, paragraphs, tables, figures, preformatted text)
rendered twice, to ``report.md`` and ``report.html``, side by side in one folder; figures are PNG
files under that folder (``figures/``) referenced by relative path, so the folder can be zipped,
copied or opened from a file browser. The HTML needs no network (inline CSS, no scripts).

Why its own module: the demo, benchmarks and pipelines all want "numbers + pictures in a file a
colleague can open"; the format rules (escaping, relative links, number formatting) live here once.

Examples:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> r = Report("Demo")
    >>> r.heading("Metrics")
    >>> r.table(["organ", "Dice"], [["liver", 0.91234]], caption="Per-organ Dice")
    >>> md, html = r.write(out)
    >>> "| liver | 0.912 |" in md.read_text()
    True
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medgen.io.atomic import write_text_atomic

__all__ = ["Report", "format_value"]

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3em; }
figure { margin: .8em 0 1.6em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .88em; }
code { background: #f3f3f3; padding: 0 .2em; }
.note { background: #fff8e0; border-left: 4px solid #e0b000; padding: .4em .8em; }
"""


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals (or scientific when tiny/huge), ``-`` for None/NaN."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "-"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) < 10 ** -digits or abs(value) >= 1e6):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def _inline_html(text: str) -> str:
    """Escape text for HTML; keep ``code`` spans and **bold** (the only inline markup we use)."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class _Block:
    kind: str
    data: dict = field(default_factory=dict)


class Report:
    """A document built block by block and written as ``report.md`` + ``report.html``.

    Args:
        title: the document's title (first heading).
    """

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[_Block] = []

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading (level 2 by default; the title is level 1)."""
        self.blocks.append(_Block("heading", {"text": text, "level": max(1, min(level, 6))}))

    def paragraph(self, text: str, *, note: bool = False) -> None:
        """A paragraph; ``note=True`` renders it as a highlighted caveat."""
        self.blocks.append(_Block("paragraph", {"text": text, "note": note}))

    def bullets(self, items: Sequence[str]) -> None:
        """A bulleted list."""
        self.blocks.append(_Block("bullets", {"items": list(items)}))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str = "",
              digits: int = 3) -> None:
        """A table; numbers are formatted with :func:`format_value`."""
        body = [[format_value(v, digits) for v in row] for row in rows]
        self.blocks.append(_Block("table", {"headers": [str(h) for h in headers], "rows": body, "caption": caption}))

    def figure(self, path: str | Path, caption: str = "") -> None:
        """A PNG figure; ``path`` must lie inside the folder the report is written to."""
        self.blocks.append(_Block("figure", {"path": Path(path), "caption": caption}))

    def preformatted(self, text: str) -> None:
        """A block of literal text (commands, paths)."""
        self.blocks.append(_Block("pre", {"text": text}))

    # -- rendering -------------------------------------------------------------------------

    def _rel(self, path: Path, out_dir: Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()

    def to_markdown(self, out_dir: str | Path) -> str:
        """The report as Markdown with figure links relative to ``out_dir``."""
        out_dir = Path(out_dir)
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            d = block.data
            if block.kind == "heading":
                lines += ["#" * d["level"] + " " + d["text"], ""]
            elif block.kind == "paragraph":
                lines += [("> **Note:** " if d["note"] else "") + d["text"], ""]
            elif block.kind == "bullets":
                lines += [f"- {item}" for item in d["items"]] + [""]
            elif block.kind == "table":
                if d["caption"]:
                    lines += [f"**{d['caption']}**", ""]
                lines.append("| " + " | ".join(_md_cell(h) for h in d["headers"]) + " |")
                lines.append("|" + "|".join("---" for _ in d["headers"]) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in d["rows"]]
                lines.append("")
            elif block.kind == "figure":
                lines += [f"![{Path(d['path']).stem}]({self._rel(d['path'], out_dir)})", ""]
                if d["caption"]:
                    lines += [f"*{d['caption']}*", ""]
            elif block.kind == "pre":
                lines += ["```", d["text"].rstrip("\n"), "```", ""]
        return "\n".join(lines)

    def to_html(self, out_dir: str | Path) -> str:
        """The report as one HTML page (inline CSS) with figure links relative to ``out_dir``."""
        out_dir = Path(out_dir)
        parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                 f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            d = block.data
            if block.kind == "heading":
                parts.append(f"<h{d['level']}>{_inline_html(d['text'])}</h{d['level']}>")
            elif block.kind == "paragraph":
                cls = ' class="note"' if d["note"] else ""
                parts.append(f"<p{cls}>{_inline_html(d['text'])}</p>")
            elif block.kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in d["items"]) + "</ul>")
            elif block.kind == "table":
                rows = ["<table>"]
                if d["caption"]:
                    rows.append(f"<caption>{_inline_html(d['caption'])}</caption>")
                rows.append("<tr>" + "".join(f"<th>{_inline_html(h)}</th>" for h in d["headers"]) + "</tr>")
                rows += ["<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in d["rows"]]
                rows.append("</table>")
                parts.append("\n".join(rows))
            elif block.kind == "figure":
                src = html.escape(self._rel(d["path"], out_dir), quote=True)
                cap = f"<figcaption>{_inline_html(d['caption'])}</figcaption>" if d["caption"] else ""
                parts.append(f'<figure><img src="{src}" alt="{html.escape(d["caption"], quote=True)}">{cap}</figure>')
            elif block.kind == "pre":
                parts.append(f"<pre>{html.escape(d['text'])}</pre>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<stem>.md`` and ``<stem>.html`` into ``out_dir`` atomically; return both paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        write_text_atomic(md, self.to_markdown(out_dir))
        write_text_atomic(page, self.to_html(out_dir))
        return md, page
