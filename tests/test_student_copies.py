"""Student copies: solutions stubbed, outputs cleared, in sync with the chapters, runnable up to exercise 1.

A student copy is not executed here: nbval executes every chapter in `make test`, every cell of the copy
outside a solution block equals the chapter's, and every cell of the copy compiles (so each stub is valid
Python). Together these prove a student can run every cell before the first exercise."""

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


def compile_cell(source: str, name: str = "<cell>"):
    """Compile a notebook cell as IPython would run it: magics such as `%matplotlib inline` become Python."""
    from IPython.core.inputtransformer2 import TransformerManager

    return compile(TransformerManager().transform_cell(source), name, "exec")


def test_compile_cell_accepts_magics_and_rejects_broken_code():
    compile_cell("%matplotlib inline\nimport math\n!echo hi\nx = math.pi")
    compile_cell("def f(x):\n    raise NotImplementedError('Exercise')")
    with pytest.raises(SyntaxError):
        compile_cell("def f(x):\n# a stub that lost its indentation\nraise NotImplementedError('Exercise')")
    with pytest.raises(SyntaxError):
        compile_cell("%matplotlib inline\nfor x in range(3):\n")


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_student_copy_compiles_and_differs_from_the_chapter_only_in_stubs(chapter):
    """Every code cell compiles (stubs included); cells without a solution block are the chapter's own code,
    so nbval's run of the chapter proves they run, up to the first exercise and beyond."""
    nb = nbformat.read(chapter, as_version=4)
    student = make_student.student_copy(nb)
    assert [c.cell_type for c in student.cells] == [c.cell_type for c in nb.cells]
    stubbed = 0
    for i, (mine, theirs) in enumerate(zip(student.cells, nb.cells, strict=True)):
        if mine.cell_type != "code":
            assert mine.source == theirs.source, f"{chapter.name}: cell {i} changed in the student copy"
            continue
        try:
            compile_cell(mine.source, f"{chapter.name}, cell {i}")
        except SyntaxError as e:
            pytest.fail(f"{chapter.name}: student cell {i} is not valid Python: {e}")
        if "# BEGIN SOLUTION" in theirs.source:
            stubbed += 1
            assert STUB in mine.source and "# BEGIN SOLUTION" not in mine.source
        else:
            assert mine.source == theirs.source.rstrip("\n"), f"{chapter.name}: cell {i} changed in the student copy"
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "# BEGIN SOLUTION" in c.source)
    assert any(c.cell_type == "code" for c in nb.cells[:first]), f"{chapter.name}: nothing to run before exercise 1"
    assert stubbed >= 2
