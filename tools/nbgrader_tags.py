"""Give a chapter nbgrader's cell metadata from the course's convention, so nbgrader can release and grade it.

A code cell with a `# BEGIN SOLUTION` / `# END SOLUTION` region is a solution cell (`exercise-N`); the next
code cell is its autograded test (`exercise-N-check`, 1 point unless already set) and must `assert`; every
other cell is read-only (locked). Only cell metadata changes: sources and outputs are left as they are.
Running it twice changes nothing. `--check` exits 1 and names the cells when a chapter lacks the metadata.

    python tools/nbgrader_tags.py notebooks/05_lora.ipynb          # tag one chapter (or several)
    python tools/nbgrader_tags.py --check                           # every chapter in notebooks/
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 3
BEGIN = re.compile(r"^[ \t]*# BEGIN SOLUTION", re.M)
END = re.compile(r"^[ \t]*# END SOLUTION", re.M)
ASSERT = re.compile(r"\bassert\b|assert_close|assert_allclose")
DEFAULT_POINTS = 1


def chapters(notebooks: Path = ROOT / "notebooks") -> list[Path]:
    """The chapter notebooks (NN_topic.ipynb), not the student copies."""
    return sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))


def _readonly_id(source: str, taken: set[str]) -> str:
    """A stable id from the cell's text (not its position, so inserting a cell renames nothing)."""
    base = "cell-" + hashlib.sha1(source.encode()).hexdigest()[:10]
    grade_id, n = base, 2
    while grade_id in taken:
        grade_id, n = f"{base}-{n}", n + 1
    return grade_id


def roles(nb: nbformat.NotebookNode, name: str = "notebook") -> list[dict]:
    """The nbgrader metadata every cell should carry (grade_id of read-only cells left None), or ValueError."""
    out: list[dict] = [dict(grade=False, solution=False, locked=True) for _ in nb.cells]
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    exercise = 0
    for k, i in enumerate(code):
        src = nb.cells[i].source
        if not BEGIN.search(src):
            continue
        if len(BEGIN.findall(src)) != len(END.findall(src)):
            raise ValueError(f"{name}: cell {i} has unbalanced # BEGIN SOLUTION / # END SOLUTION lines; "
                             "close every solution region in the same cell")
        exercise += 1
        out[i] = dict(grade=False, solution=True, locked=False, grade_id=f"exercise-{exercise}")
        test = code[k + 1] if k + 1 < len(code) else None
        if test is None or BEGIN.search(nb.cells[test].source) or not ASSERT.search(nb.cells[test].source):
            raise ValueError(f"{name}: exercise {exercise} (cell {i}) must be followed by a code cell that "
                             "asserts the answer (the autograded test); add one after the solution cell")
        out[test] = dict(grade=True, solution=False, locked=True, grade_id=f"exercise-{exercise}-check")
    for cell in nb.cells:
        if cell.cell_type not in ("code", "markdown") and cell.get("metadata", {}).get("nbgrader"):
            raise ValueError(f"{name}: nbgrader metadata on a {cell.cell_type} cell; remove it")
    return out


def _points(cell: nbformat.NotebookNode) -> float:
    """Keep points an instructor has set on a test cell; default 1."""
    points = cell.metadata.get("nbgrader", {}).get("points", DEFAULT_POINTS)
    return points if isinstance(points, (int, float)) and points > 0 else DEFAULT_POINTS


def tag(nb: nbformat.NotebookNode, name: str = "notebook") -> int:
    """Write nbgrader metadata into every cell (in place); return how many cells changed."""
    wanted = roles(nb, name)
    fixed = {w["grade_id"] for w in wanted if "grade_id" in w}
    taken = set(fixed)
    changed = 0
    for cell, want in zip(nb.cells, wanted, strict=True):
        old = cell.metadata.get("nbgrader", {})
        meta = dict(want)
        if "grade_id" not in meta:  # read-only: keep a valid id it already has
            keep = old.get("grade_id")
            ok = keep and keep not in taken and not keep.startswith("exercise-") and old.get("locked") \
                and not old.get("solution") and not old.get("grade")
            meta["grade_id"] = keep if ok else _readonly_id(cell.source, taken)
        taken.add(meta["grade_id"])
        if meta["grade"]:
            meta["points"] = _points(cell)
        meta["schema_version"] = SCHEMA_VERSION
        if dict(old) != meta:
            cell.metadata["nbgrader"] = meta
            changed += 1
    return changed


def problems(nb: nbformat.NotebookNode, name: str = "notebook") -> list[str]:
    """What `tag` would change, one line per cell (empty when the chapter is nbgrader-ready)."""
    try:
        wanted = roles(nb, name)
    except ValueError as e:
        return [str(e)]
    out, seen = [], set()
    for i, (cell, want) in enumerate(zip(nb.cells, wanted, strict=True)):
        meta = cell.metadata.get("nbgrader")
        label = f"{name}: cell {i} ({cell.cell_type}, {cell.source.splitlines()[0][:40] if cell.source else ''!r})"
        if not meta:
            out.append(f"{label} has no nbgrader metadata")
            continue
        wrong = [k for k, v in want.items() if meta.get(k) != v]
        if meta.get("schema_version") != SCHEMA_VERSION:
            wrong.append("schema_version")
        if want["grade"] and not (isinstance(meta.get("points"), (int, float)) and meta["points"] > 0):
            wrong.append("points")
        if not meta.get("grade_id") or meta.get("grade_id") in seen:
            wrong.append("grade_id (missing or duplicate)")
        seen.add(meta.get("grade_id"))
        if wrong:
            out.append(f"{label} has wrong nbgrader {', '.join(wrong)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path, help="chapters to tag (default: every notebooks/NN_*.ipynb)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a chapter lacks the metadata")
    args = p.parse_args(argv)
    paths = args.notebooks or chapters()
    if not paths:
        p.error("no notebooks found")
    failures = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if args.check:
            found = problems(nb, path.name)
            for line in found[:5]:
                print(line, file=sys.stderr)
            if len(found) > 5:
                print(f"{path.name}: ... and {len(found) - 5} more cells", file=sys.stderr)
            failures += bool(found)
            continue
        try:
            changed = tag(nb, path.name)
        except ValueError as e:
            print(e, file=sys.stderr)
            failures += 1
            continue
        if changed:
            nbformat.write(nb, path)
        print(f"{path}: {changed} cells {'tagged' if changed else 'already tagged'}")
    if args.check and failures:
        print(f"{failures} notebook(s) lack nbgrader metadata: run `python tools/nbgrader_tags.py`", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
