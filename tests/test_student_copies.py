"""Student copies: solutions stubbed, outputs cleared, in sync with the chapters, runnable up to exercise 1."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
STUB = 'raise NotImplementedError("Exercise'

spec = importlib.util.spec_from_file_location("make_student", ROOT / "tools" / "make_student.py")
make_student = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_student)


def test_strip_solutions_keeps_surrounding_code_and_indentation():
    src = "def f(x):\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n\nprint(f)\n"
    assert make_student.strip_solutions(src) == (
        'def f(x):\n    raise NotImplementedError("Exercise: replace this line with your solution")\n\nprint(f)')


def test_strip_solutions_handles_several_blocks():
    src = "# BEGIN SOLUTION\na = 1\n# END SOLUTION\nb = 2\n# BEGIN SOLUTION\nc = 3\n# END SOLUTION\n"
    out = make_student.strip_solutions(src)
    assert out.count(STUB) == 2 and "a = 1" not in out and "c = 3" not in out and "b = 2" in out


def test_committed_student_copies_are_up_to_date():
    assert CHAPTERS, "no chapter notebooks found"
    assert make_student.main(["--check"]) == 0, "notebooks/student/ is stale: run `make student`"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_has_checked_exercises(chapter):
    """Each solution block is stubbed in the student copy and followed by an assert cell."""
    nb = nbformat.read(chapter, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    solved = [i for i, src in enumerate(code) if "# BEGIN SOLUTION" in src]
    assert 2 <= len(solved) <= 4, f"{chapter.name}: expected 2-4 exercises, found {len(solved)}"
    for i in solved:
        assert i + 1 < len(code) and "assert" in code[i + 1], f"{chapter.name}: exercise cell {i} has no assert cell after it"
    student = make_student.student_copy(nb)
    assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code")
    assert sum(c.source.count(STUB) for c in student.cells if c.cell_type == "code") == \
        sum(src.count("# BEGIN SOLUTION") for src in code)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_student_copy_runs_up_to_the_first_exercise(chapter):
    """A student can run every cell before the first exercise without an error."""
    from nbclient import NotebookClient

    nb = make_student.student_copy(nbformat.read(chapter, as_version=4))
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and STUB in c.source)
    nb.cells = nb.cells[:first]
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
