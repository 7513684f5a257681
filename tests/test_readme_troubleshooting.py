"""The troubleshooting tables (docs/troubleshooting.md, linked from the README): every test file
named in a "tested in" column exists.

A row that promises "tested in tests/x.py" must point at a real test file, so the table cannot
drift from the suite when tests are renamed or removed.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_PATH = re.compile(r"`(tests/[^`:\s]+\.py)(?:::[^`]*)?`")


def troubleshooting_rows(text: str) -> list[tuple[str, str]]:
    """(first cell, "tested in" cell) of every table row under a ``## Troubleshooting`` heading, or of
    the whole page when it has none (docs/troubleshooting.md)."""
    match = re.search(r"^## Troubleshooting\b.*?(?=^## |\Z)", text, flags=re.M | re.S)
    rows, column = [], None
    for line in (match.group(0) if match else text).splitlines():
        if not line.startswith("|"):
            column = None  # a table ended
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # "\|" is a literal pipe
        if column is None:
            lowered = [c.lower() for c in cells]
            column = lowered.index("tested in") if "tested in" in lowered else -1
            continue
        if column < 0 or set("".join(cells)) <= set("-: "):
            continue  # a table without the column, or the header's separator row
        rows.append((cells[0], cells[column] if column < len(cells) else ""))
    return rows


def test_every_troubleshooting_row_names_existing_test_files():
    assert "docs/troubleshooting.md" in (REPO / "README.md").read_text(), "the README must link the tables"
    rows = troubleshooting_rows((REPO / "docs" / "troubleshooting.md").read_text())
    assert rows, "no troubleshooting rows with a 'tested in' column found"
    missing = []
    for symptom, tested_in in rows:
        paths = TEST_PATH.findall(tested_in)
        if not paths:
            missing.append(f"{symptom}: no test file named ({tested_in!r})")
        missing += [f"{symptom}: {p} does not exist" for p in paths if not (REPO / p).is_file()]
    assert not missing, "\n".join(missing)


def test_the_parser_reads_cells_and_ignores_other_tables():
    text = ("# x\n## Troubleshooting\n| situation | fix | tested in |\n|---|---|---|\n"
            "| a | b \\| c | `tests/test_readme_troubleshooting.py`, `tests/nope.py::test_x` (why) |\n\n"
            "| no such column |\n|---|\n| c |\n## Next\n| s | tested in |\n|---|---|\n| d | `tests/e.py` |\n")
    rows = troubleshooting_rows(text)
    assert rows == [("a", "`tests/test_readme_troubleshooting.py`, `tests/nope.py::test_x` (why)")]
    assert TEST_PATH.findall(rows[0][1]) == ["tests/test_readme_troubleshooting.py", "tests/nope.py"]
