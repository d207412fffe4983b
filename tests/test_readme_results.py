"""The README's comparison tables are the committed study's, line for line: no number there can drift."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "results" / "quick-cpu2"
SECTION = "## What the comparison found"
HEADERS = ("| strategy | lr | seeds | test acc", "| strategy | aspect | claim | measured | verdict |")


def table(text: str, header: str) -> list[str]:
    """The markdown table starting at the line that begins with `header`."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"expected one table headed {header!r}, found {len(starts)}"
    rows = []
    for line in lines[starts[0]:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("header", HEADERS, ids=["accuracy", "verdicts"])
def test_readme_tables_are_the_committed_studys(header):
    summary = (STUDY / "summary.md").read_text()
    assert table(readme_section(), header) == table(summary, header)


def test_the_table_reader_catches_a_changed_cell():
    summary = (STUDY / "summary.md").read_text()
    rows = table(summary, HEADERS[1])
    edited = summary.replace(rows[2], rows[2].rsplit("|", 2)[0] + "| another verdict |")
    assert table(edited, HEADERS[1]) != rows
