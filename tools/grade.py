"""Grade one submitted chapter with nbgrader and print a per-exercise score table ending in `total: X / Y`.

No course to set up: a temporary nbgrader course (its own nbgrader_config.py and sqlite gradebook) is built,
the chapter is released from notebooks/ (nbgrader's generate_assignment), the submission is autograded
(autograde: the test cells and every locked cell are restored from the chapter, so editing a check does not
help; then the notebook runs top to bottom) and generate_feedback writes nbgrader's HTML report.

    python tools/grade.py path/to/05_lora.ipynb              # graded against notebooks/05_lora.ipynb
    python tools/grade.py answers.ipynb --source notebooks/05_lora.ipynb --feedback report.html
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_student  # noqa: E402
import nbgrader_tags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COURSE, ASSIGNMENT, STUDENT = "ftlib", "chapter", "student"


@dataclass(frozen=True)
class Score:
    grade_id: str  # the test cell's grade_id, e.g. "exercise-2-check"
    points: float
    max_points: float

    @property
    def label(self) -> str:
        m = re.fullmatch(r"exercise-(\d+)-check", self.grade_id)
        return f"exercise {m.group(1)}" if m else self.grade_id


def _config_file(course: Path, timeout: int) -> str:
    """nbgrader_config.py of the course: make_student's release settings, a cell timeout fit for training."""
    lines = [
        "c = get_config()  # noqa",
        f"c.CourseDirectory.root = {str(course)!r}",
        f"c.CourseDirectory.course_id = {COURSE!r}",
        f"c.CourseDirectory.db_url = {'sqlite:///' + str(course / 'gradebook.db')!r}",
        f"c.Execute.timeout = {timeout!r}",
    ]
    for section, values in make_student.CONFIG.items():
        lines += [f"c.{section}.{key} = {value!r}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _environment() -> Iterator[None]:
    """This interpreter's bin first on PATH (nbgrader's Gradebook shells out to `alembic heads`) and this
    checkout's ftlib importable by the grading kernel; both restored afterwards."""
    from sqlalchemy.exc import SAWarning

    saved = {k: os.environ.get(k) for k in ("PATH", "PYTHONPATH")}
    os.environ["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), saved["PATH"]]))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader 0.9 on SQLAlchemy 2: autoflush notes
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run(converter, config, coursedir, **attrs) -> None:
    """Start one nbgrader converter (what `nbgrader <command>` runs); raise with its log if it fails."""
    from nbgrader.utils import capture_log

    app = converter(coursedir=coursedir, config=config)
    for key, value in attrs.items():
        setattr(app, key, value)
    result = capture_log(app)
    if not result["success"]:
        raise RuntimeError(f"nbgrader {converter.__name__} failed:\n{result.get('log', '')[-3000:]}"
                           f"\n{result.get('error', '')[-3000:]}")


def _check_submission(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    if not any(c.get("metadata", {}).get("nbgrader", {}).get("grade") for c in nb.cells):
        raise ValueError(f"{path} has no nbgrader test cells: students must start from the copy in "
                         "notebooks/student/ (`make student`), whose cells carry the metadata nbgrader grades")


def grade(submission: Path, source: Path | None = None, feedback: Path | None = None,
          timeout: int = 1800, course_dir: Path | None = None) -> list[Score]:
    """Autograde `submission` against the chapter `source`; copy the feedback HTML to `feedback` if given.

    The nbgrader course lives in a temporary folder, or in `course_dir` (a new folder, kept to inspect)."""
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde, GenerateAssignment, GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    submission = Path(submission)
    source = Path(source) if source else ROOT / "notebooks" / submission.name
    if not submission.is_file():
        raise ValueError(f"no submission at {submission}; pass the path of the student's .ipynb")
    if not source.is_file():
        raise ValueError(f"no chapter {source} to grade {submission.name} against; "
                         "pass --source notebooks/NN_topic.ipynb")
    _check_submission(submission)
    chapter = nbformat.read(source, as_version=4)
    nbgrader_tags.tag(chapter, source.name)  # in memory: a chapter not tagged yet grades too
    order = [c.metadata.nbgrader["grade_id"] for c in chapter.cells if c.metadata.nbgrader["grade"]]
    if not order:
        raise ValueError(f"{source.name} has no exercises (no cell with # BEGIN SOLUTION): nothing to grade")
    if course_dir is not None and course_dir.exists() and any(course_dir.iterdir()):
        raise ValueError(f"--course {course_dir} is not empty; give a new folder (or none for a temporary one)")
    name = source.stem
    temporary = tempfile.TemporaryDirectory(prefix="ftlib-grade-") if course_dir is None else None
    course = Path(temporary.name if temporary else course_dir).resolve()
    try:
        course.mkdir(parents=True, exist_ok=True)
        (course / "nbgrader_config.py").write_text(_config_file(course, timeout))
        released = course / "source" / ASSIGNMENT / f"{name}.ipynb"
        submitted = course / "submitted" / STUDENT / ASSIGNMENT / f"{name}.ipynb"
        for path in (released, submitted):
            path.parent.mkdir(parents=True)
        nbformat.write(chapter, released)
        shutil.copyfile(submission, submitted)
        config = PyFileConfigLoader("nbgrader_config.py", str(course)).load_config()
        coursedir = CourseDirectory(config=config, assignment_id=ASSIGNMENT)
        with _environment(), contextlib.chdir(course):
            _run(GenerateAssignment, config, coursedir, force=True)
            coursedir.student_id = STUDENT
            _run(Autograde, config, coursedir, force=True)
            _run(GenerateFeedback, config, coursedir, force=True)
            with Gradebook(coursedir.db_url, COURSE) as gb:
                graded = gb.find_submission_notebook(name, ASSIGNMENT, STUDENT)
                got = {g.name: Score(g.name, float(g.score), float(g.max_score)) for g in graded.grades}
        if feedback is not None:
            feedback.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(course / "feedback" / STUDENT / ASSIGNMENT / f"{name}.html", feedback)
    finally:
        if temporary:
            temporary.cleanup()
    return [got[grade_id] for grade_id in order]


def table(scores: list[Score]) -> str:
    """One line per exercise, then `total: X / Y`."""
    width = max(len("exercise"), *(len(s.label) for s in scores))
    rows = [f"{'exercise':<{width}}  score"]
    rows += [f"{s.label:<{width}}  {s.points:g} / {s.max_points:g}" + ("" if s.points == s.max_points else
                                                                      "  (check failed)") for s in scores]
    rows.append(f"total: {sum(s.points for s in scores):g} / {sum(s.max_points for s in scores):g}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("submission", type=Path, help="the student's notebook (.ipynb)")
    p.add_argument("--source", type=Path, help="the chapter it answers (default: notebooks/<same file name>)")
    p.add_argument("--feedback", type=Path, help="where to write nbgrader's feedback HTML "
                   "(default: next to the submission, <name>.feedback.html)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default 1800)")
    p.add_argument("--course", type=Path, help="keep the nbgrader course (gradebook, autograded copy) in this "
                   "new folder instead of a temporary one")
    args = p.parse_args(argv)
    feedback = args.feedback or args.submission.with_suffix(".feedback.html")
    try:
        scores = grade(args.submission, args.source, feedback, args.timeout, args.course)
    except (ValueError, RuntimeError) as e:
        print(f"grade: {e}", file=sys.stderr)
        return 2
    print(table(scores))
    print(f"feedback: {feedback}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
