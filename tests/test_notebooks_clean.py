"""Committed chapters carry the outputs of one clean top-to-bottom run on the quick profile (`make notebooks`).

nbval (run by `make test` on the smoke profile) proves each chapter still runs; these checks prove that the
outputs a reader sees were not patched together from several runs, nor saved from a failing or smoke run."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CHAPTERS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
FIX = "re-execute it top to bottom with `make notebooks`"


def run_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Why a notebook's saved outputs are not one clean run: counts other than 1..N in order, errors."""
    problems = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    if counts != list(range(1, len(code) + 1)):
        bad = next(i for i, n in enumerate(counts) if n != i + 1)
        problems.append(f"execution counts are not 1..{len(code)}: code cell {bad} has {counts[bad]}")
    for i, cell in enumerate(code):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"code cell {i} saved an error: {out.get('ename')}: {out.get('evalue')}")
            if out.get("execution_count") not in (None, cell.execution_count):
                problems.append(f"code cell {i} holds the output of execution {out['execution_count']}")
    return problems


def profile_shown(nb: nbformat.NotebookNode) -> str | None:
    """The profile name the first code cell printed (`profile quick`, `Profile(name='quick', ...)`), if any."""
    first = next((c for c in nb.cells if c.cell_type == "code"), None)
    text = "".join(o.get("text", "") for o in (first.get("outputs", []) if first else []))
    match = re.search(r"Profile\(name='(\w+)'", text) or re.search(r"(?m)(?:^|\| )profile:?\s+(\w+)", text)
    return match.group(1) if match else None


def make_nb(*cells) -> nbformat.NotebookNode:
    """A notebook from (execution_count, outputs) pairs, for testing the checks themselves."""
    nb = nbformat.v4.new_notebook()
    for count, outputs in cells:
        cell = nbformat.v4.new_code_cell("x = 1")
        cell.execution_count, cell.outputs = count, [nbformat.from_dict(o) for o in outputs]
        nb.cells.append(cell)
    return nb


def stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def test_run_problems_catches_reruns_gaps_unexecuted_cells_and_errors():
    assert run_problems(make_nb((1, []), (2, [stream("ok")]), (3, []))) == []
    assert "code cell 1 has 3" in run_problems(make_nb((1, []), (3, []), (2, [])))[0]  # a cell re-run by hand
    assert "code cell 2 has None" in run_problems(make_nb((1, []), (2, []), (None, [])))[0]  # never executed
    assert "code cell 0 has 2" in run_problems(make_nb((2, []), (3, [])))[0]  # the kernel ran something first
    error = {"output_type": "error", "ename": "AssertionError", "evalue": "", "traceback": []}
    assert run_problems(make_nb((1, []), (2, [error]))) == ["code cell 1 saved an error: AssertionError: "]
    result = {"output_type": "execute_result", "execution_count": 5, "data": {"text/plain": "1"}, "metadata": {}}
    assert run_problems(make_nb((1, [result]))) == ["code cell 0 holds the output of execution 5"]


def test_profile_shown_reads_every_first_cell_style():
    assert profile_shown(make_nb((1, [stream("device cpu\nprofile       quick\n")]))) == "quick"
    assert profile_shown(make_nb((1, [stream("Profile(name='smoke', max_train=200)\n")]))) == "smoke"
    assert profile_shown(make_nb((1, [stream("profile: Profile(name='quick', epochs=2)\n")]))) == "quick"
    assert profile_shown(make_nb((1, [stream("device cpu | torch 2.13 | profile quick\n")]))) == "quick"
    assert profile_shown(make_nb((1, [stream("no profile printed here")]))) is None


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_committed_chapter_is_one_clean_quick_run(chapter):
    nb = nbformat.read(chapter, as_version=4)
    problems = run_problems(nb)
    assert not problems, f"{chapter.name} is not one clean run ({'; '.join(problems)}): {FIX}"
    shown = profile_shown(nb)
    assert shown == "quick", f"{chapter.name}'s first cell shows profile {shown!r}, not 'quick': {FIX}"
