"""The report builder: one document as Markdown and HTML, figures linked relatively, text escaped."""

from __future__ import annotations

import math

from medgen.report import Report, format_value


def test_format_value_edge_cases():
    assert format_value(0.912345) == "0.912"
    assert format_value(0.912345, digits=1) == "0.9"
    assert format_value(3) == "3" and format_value(True) == "yes"
    assert format_value(None) == "-" and format_value(math.nan) == "-"
    assert format_value(math.inf) == "inf"
    assert format_value(0.00001234) == "1.23e-05"  # tiny values keep their significant digits
    assert format_value("liver") == "liver"


def test_markdown_and_html_hold_the_same_content(tmp_path):
    out = tmp_path / "report"
    figure = out / "figures" / "dice.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    r = Report("Demo <run>")
    r.heading("Metrics")
    r.paragraph("Dice of the `chain` is **higher**.")
    r.paragraph("Phantoms only.", note=True)
    r.table(["organ", "Dice"], [["liver | left", 0.91234], ["spleen", None]], caption="Per organ")
    r.figure(figure, "Mean Dice & co")
    r.bullets(["one", "two <b>"])
    r.preformatted("mlflow ui --backend-store-uri sqlite:///x/mlflow.db")
    md_path, html_path = r.write(out)
    md, html = md_path.read_text(), html_path.read_text()

    assert md.startswith("# Demo <run>\n")
    assert "| liver \\| left | 0.912 |" in md and "| spleen | - |" in md
    assert "![dice](figures/dice.png)" in md and "*Mean Dice & co*" in md
    assert "> **Note:** Phantoms only." in md
    assert "```\nmlflow ui --backend-store-uri sqlite:///x/mlflow.db\n```" in md

    assert "<title>Demo &lt;run&gt;</title>" in html
    assert '<img src="figures/dice.png" alt="Mean Dice &amp; co">' in html
    assert "<td>liver | left</td><td>0.912</td>" in html
    assert "<code>chain</code>" in html and "<strong>higher</strong>" in html
    assert "<li>two &lt;b&gt;</li>" in html and '<p class="note">' in html
    assert "http" not in html.replace("http-equiv", "")  # self-contained: no remote resources


def test_figures_outside_the_folder_are_linked_relatively(tmp_path):
    elsewhere = tmp_path / "shared" / "qc.png"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"")
    r = Report("x")
    r.figure(elsewhere)
    md, _ = r.write(tmp_path / "out")
    assert "](../shared/qc.png)" in md.read_text()
