"""nbgrader-ready chapters: the tagging tool, student copies through nbgrader's preprocessors, and grading.

The grading tests autograde a small notebook built here (a real chapter takes minutes to run): a solved copy
scores full marks, a fresh student copy scores zero on every exercise, one wrong answer loses exactly that
exercise's points, and editing a check does not help (nbgrader restores it from the chapter).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


sys.path.insert(0, str(ROOT / "tools"))  # the tools are scripts that import each other by name
nbgrader_tags, make_student, grade = (importlib.import_module(n) for n in ("nbgrader_tags", "make_student", "grade"))

ANSWERS = ("y = x * 3", "    return n + 1", "z = [i * i for i in range(4)]")


def tiny_chapter() -> nbformat.NotebookNode:
    """Three exercises in the course's convention; exercise 2's check is worth 2 points."""
    nb = new_notebook(cells=[
        new_markdown_cell("# 99 · A tiny chapter"),
        new_code_cell("x = 2", execution_count=1, outputs=[new_output("stream", name="stdout", text="")]),
        new_markdown_cell("## Exercises\n\n**1.** Triple x."),
        new_code_cell(f"# BEGIN SOLUTION\n{ANSWERS[0]}\n# END SOLUTION\nprint('y is ready')"),
        new_code_cell("assert y == 6\nprint('exercise 1 correct')"),
        new_markdown_cell("**2.** Write the successor function."),
        new_code_cell(f"def f(n):\n    # BEGIN SOLUTION\n{ANSWERS[1]}\n    # END SOLUTION"),
        new_code_cell("assert f(1) == 2 and f(41) == 42"),
        new_markdown_cell("**3.** The first four squares."),
        new_code_cell(f"# BEGIN SOLUTION\n{ANSWERS[2]}\n# END SOLUTION"),
        new_code_cell("assert z == [0, 1, 4, 9]"),
        new_markdown_cell("### Further reading\n\n- https://nbgrader.readthedocs.io"),
    ])
    nb.cells[7].metadata["nbgrader"] = {"points": 2}  # an instructor's choice the tool keeps
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.language_info = {"name": "python"}
    return nb


def tagged_chapter() -> nbformat.NotebookNode:
    nb = tiny_chapter()
    nbgrader_tags.tag(nb)
    return nb


# --- tools/nbgrader_tags.py ---------------------------------------------------------------------------------

def test_tag_marks_solutions_tests_and_locks_the_rest():
    nb = tagged_chapter()
    meta = [c.metadata["nbgrader"] for c in nb.cells]
    assert [m["grade_id"] for m in meta if m["solution"]] == ["exercise-1", "exercise-2", "exercise-3"]
    assert [(m["grade_id"], m["points"]) for m in meta if m["grade"]] == \
        [("exercise-1-check", 1), ("exercise-2-check", 2), ("exercise-3-check", 1)]
    solution_cells = [i for i, m in enumerate(meta) if m["solution"]]
    assert all(meta[i + 1]["grade"] and meta[i + 1]["locked"] for i in solution_cells)
    others = [m for m in meta if not m["solution"] and not m["grade"]]
    assert len(others) == len(nb.cells) - 6 and all(m["locked"] for m in others)
    assert all(m["schema_version"] == 3 for m in meta)
    assert len({m["grade_id"] for m in meta}) == len(meta)


def test_tag_is_valid_for_nbgrader():
    from nbgrader.nbgraderformat import MetadataValidator

    MetadataValidator().validate_nb(tagged_chapter())  # raises on a missing id, points or duplicate


def test_tag_changes_only_cell_metadata_and_is_idempotent():
    before, nb = tiny_chapter(), tiny_chapter()
    assert nbgrader_tags.tag(nb) == len(nb.cells)
    once = nbformat.writes(nb)
    assert nbgrader_tags.tag(nb) == 0 and nbformat.writes(nb) == once
    for old, new in zip(before.cells, nb.cells, strict=True):
        assert (old.source, old.get("outputs"), old.cell_type) == (new.source, new.get("outputs"), new.cell_type)
        assert {k: v for k, v in new.metadata.items() if k != "nbgrader"} == \
            {k: v for k, v in old.metadata.items() if k != "nbgrader"}
    assert before.metadata == nb.metadata


def test_inserting_a_cell_keeps_the_other_ids():
    nb = tagged_chapter()
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells]
    nb.cells.insert(1, new_markdown_cell("A new paragraph."))
    nbgrader_tags.tag(nb)
    assert [c.metadata["nbgrader"]["grade_id"] for c in nb.cells[:1] + nb.cells[2:]] == ids


def test_check_fails_on_untagged_or_stale_metadata_and_passes_once_tagged():
    nb = tiny_chapter()
    assert any("no nbgrader metadata" in p for p in nbgrader_tags.problems(nb))
    nbgrader_tags.tag(nb)
    assert nbgrader_tags.problems(nb) == []
    nb.cells[3].metadata["nbgrader"]["solution"] = False  # a solution cell that lost its flag
    assert any("cell 3" in p and "solution" in p for p in nbgrader_tags.problems(nb))
    nb = tagged_chapter()
    nb.cells[1].source = "# BEGIN SOLUTION\nx = 2\n# END SOLUTION"  # a new exercise without a test cell
    assert any("must be followed by a code cell that asserts" in p for p in nbgrader_tags.problems(nb))


def test_check_cli_exit_status(tmp_path, capsys):
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(tiny_chapter(), path)
    assert nbgrader_tags.main(["--check", str(path)]) == 1
    assert "run `python tools/nbgrader_tags.py`" in capsys.readouterr().err
    assert nbgrader_tags.main([str(path)]) == 0
    assert nbgrader_tags.main(["--check", str(path)]) == 0


@pytest.mark.parametrize("source, message", [
    ("# BEGIN SOLUTION\ny = 1\n", "unbalanced"),
])
def test_bad_solution_markers_are_refused(source, message):
    nb = tiny_chapter()
    nb.cells[3].source = source
    with pytest.raises(ValueError, match=message):
        nbgrader_tags.tag(nb)


def test_solution_without_assert_cell_is_refused():
    nb = tiny_chapter()
    nb.cells[4].source = "print(y)"
    with pytest.raises(ValueError, match="exercise 1 .* must be followed by a code cell that asserts"):
        nbgrader_tags.tag(nb)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_has_nbgrader_metadata(chapter):
    """Real assertion on the committed chapters: fails until `python tools/nbgrader_tags.py` has run on them."""
    found = nbgrader_tags.problems(nbformat.read(chapter, as_version=4), chapter.name)
    assert not found, (f"{chapter.name} lacks nbgrader metadata ({len(found)} cells, first: {found[0]}); "
                       f"run `python tools/nbgrader_tags.py notebooks/{chapter.name}` (metadata only)")


# --- tools/make_student.py: nbgrader's release, without a course ------------------------------------------

def test_student_copy_stubs_every_solution_and_clears_outputs():
    student = make_student.student_copy(tagged_chapter())
    code = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert code.count(make_student.CODE_STUB) == 3 and not any(a.strip() in code for a in ANSWERS)
    assert "print('y is ready')" in code and "def f(n):\n    raise NotImplementedError" in code
    assert all(c.outputs == [] and c.execution_count is None for c in student.cells if c.cell_type == "code")
    locked = [c for c in student.cells if c.metadata["nbgrader"]["locked"]]
    assert locked and all(c.metadata["editable"] is False and c.metadata["deletable"] is False for c in locked)


def test_student_copy_equals_nbgrader_generate_assignment(tmp_path):
    """make_student runs the same preprocessors as `nbgrader generate_assignment` in a real course."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    chapter = tagged_chapter()
    (tmp_path / "source" / "a").mkdir(parents=True)
    nbformat.write(chapter, tmp_path / "source" / "a" / "99_tiny.ipynb")
    (tmp_path / "nbgrader_config.py").write_text(grade._config_file(tmp_path, 60))
    config = PyFileConfigLoader("nbgrader_config.py", str(tmp_path)).load_config()
    with grade._environment():
        app = GenerateAssignment(coursedir=CourseDirectory(config=config, assignment_id="a"), config=config)
        app.force = True
        app.start()
    released = nbformat.read(tmp_path / "release" / "a" / "99_tiny.ipynb", as_version=4)
    ours = make_student.student_copy(chapter)
    assert [(c.cell_type, c.source, c.metadata) for c in ours.cells] == \
        [(c.cell_type, c.source, c.metadata) for c in released.cells]


# --- tools/grade.py ------------------------------------------------------------------------------------------

def _write(nb, path: Path) -> Path:
    nbformat.write(nb, path)
    return path


def _wrong_answer(exercise: int) -> nbformat.NotebookNode:
    nb = tagged_chapter()
    cell = next(c for c in nb.cells if c.metadata["nbgrader"]["grade_id"] == f"exercise-{exercise}")
    cell.source = cell.source.replace(ANSWERS[exercise - 1], {1: "y = x * 4", 2: "    return n",
                                                              3: "z = [0, 1, 4, 8]"}[exercise])
    return nb


def _tampered_student_copy() -> nbformat.NotebookNode:
    nb = make_student.student_copy(tagged_chapter())
    check = next(c for c in nb.cells if c.metadata["nbgrader"]["grade_id"] == "exercise-1-check")
    check.source = "pass  # the student emptied the check"
    return nb


@pytest.fixture(scope="module")
def chapter_path(tmp_path_factory) -> Path:
    return _write(tiny_chapter(), tmp_path_factory.mktemp("chapter") / "99_tiny.ipynb")  # untagged, as today


def test_solved_copy_scores_full_marks_through_the_cli(chapter_path, tmp_path, capsys):
    submission = _write(tagged_chapter(), tmp_path / "99_tiny.ipynb")
    assert grade.main([str(submission), "--source", str(chapter_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1:] == ["exercise 1  1 / 1", "exercise 2  2 / 2", "exercise 3  1 / 1", "total: 4 / 4"]
    feedback = tmp_path / "99_tiny.feedback.html"
    assert feedback.is_file() and "exercise-2-check" in feedback.read_text()


@pytest.mark.parametrize("case, expected", [
    ("fresh student copy", [0, 0, 0]),
    ("wrong answer to exercise 2", [1, 0, 1]),
    ("wrong answer to exercise 3", [1, 2, 0]),
    ("student copy with exercise 1's check emptied", [0, 0, 0]),
])
def test_scores(case, expected, chapter_path, tmp_path):
    nb = {"fresh student copy": lambda: make_student.student_copy(tagged_chapter()),
          "wrong answer to exercise 2": lambda: _wrong_answer(2),
          "wrong answer to exercise 3": lambda: _wrong_answer(3),
          "student copy with exercise 1's check emptied": _tampered_student_copy}[case]()
    scores = grade.grade(_write(nb, tmp_path / "99_tiny.ipynb"), chapter_path)
    assert [s.grade_id for s in scores] == ["exercise-1-check", "exercise-2-check", "exercise-3-check"]
    assert [s.max_points for s in scores] == [1, 2, 1]
    assert [s.points for s in scores] == expected, case
    assert grade.table(scores).splitlines()[-1] == f"total: {sum(expected):g} / 4"


def test_grade_refuses_a_notebook_without_nbgrader_cells(chapter_path, tmp_path):
    with pytest.raises(ValueError, match="notebooks/student/"):
        grade.grade(_write(tiny_chapter(), tmp_path / "99_tiny.ipynb"), chapter_path)


def test_grade_names_the_source_option_when_no_chapter_matches(tmp_path):
    submission = _write(tagged_chapter(), tmp_path / "99_not_a_chapter.ipynb")
    with pytest.raises(ValueError, match="--source"):
        grade.grade(submission)


def test_table_format():
    scores = [grade.Score("exercise-1-check", 1, 1), grade.Score("exercise-2-check", 0, 2)]
    assert grade.table(scores).splitlines() == [
        "exercise    score", "exercise 1  1 / 1", "exercise 2  0 / 2  (check failed)", "total: 1 / 3"]
