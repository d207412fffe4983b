"""Write notebooks/student/ with nbgrader's own release preprocessors, as `nbgrader generate_assignment` does.

Each chapter first gets nbgrader's cell metadata from the course convention (tools/nbgrader_tags.py, in memory,
a no-op on a tagged chapter); then LockCells, ClearSolutions (every `# BEGIN SOLUTION` ... `# END SOLUTION`
region becomes a stub), ClearOutput, ComputeChecksums, ClearHiddenTests and ClearMarkScheme run through
nbconvert, in generate_assignment's order, without a course directory or gradebook (the gradebook step,
SaveCells, is the only one left out: tools/grade.py makes its own). `--check` fails if the copies are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    LockCells,
)
from traitlets.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbgrader_tags  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CODE_STUB = 'raise NotImplementedError("Exercise: replace this line with your solution")'
# The same settings go into the nbgrader_config.py of tools/grade.py's course, so both release identical copies.
CONFIG = {
    "ClearSolutions": {"code_stub": {"python": CODE_STUB}},
    "ClearOutput": {"remove_metadata_fields": ["collapsed", "scrolled", "execution"]},
}
# GenerateAssignment.preprocessors without IncludeHeaderFooter/InstantiateTests (unused here) and SaveCells (db).
RELEASE = [LockCells, ClearSolutions, ClearOutput, CheckCellMetadata, ComputeChecksums,
           ClearHiddenTests, ClearMarkScheme, ComputeChecksums, CheckCellMetadata]


def _config() -> Config:
    cfg = Config()
    for section, values in CONFIG.items():
        for key, value in values.items():
            setattr(cfg[section], key, value)
    return cfg


def strip_solutions(source: str) -> str:
    """Replace every marked solution region by the stub (nbgrader's ClearSolutions), keeping the code around it."""
    cell = nbformat.v4.new_code_cell(source)
    ClearSolutions(config=_config())._replace_solution_region(cell, "python")
    return cell.source.rstrip("\n")


def student_copy(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The release version of a chapter: nbgrader's preprocessors on a tagged copy, widget state dropped."""
    nb = nbformat.from_dict(nb)
    nbgrader_tags.tag(nb, name)
    resources: dict = {}
    cfg = _config()
    for preprocessor in RELEASE:
        nb, resources = preprocessor(config=cfg).preprocess(nb, resources)
    nb.metadata.pop("widgets", None)
    return nb


def render(path: Path) -> str:
    return nbformat.writes(student_copy(nbformat.read(path, as_version=4), path.name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if notebooks/student/ is out of date")
    p.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    args = p.parse_args(argv)
    out_dir = args.notebooks / "student"
    sources = nbgrader_tags.chapters(args.notebooks)
    stale = []
    for src in sources:
        text, dst = render(src), out_dir / src.name
        if args.check:
            if not dst.exists() or dst.read_text() != text:
                stale.append(dst.name)
        else:
            out_dir.mkdir(exist_ok=True)
            dst.write_text(text)
    extra = {p.name for p in out_dir.glob("*.ipynb")} - {s.name for s in sources}
    if args.check and (stale or extra):
        print(f"student copies out of date: {sorted(stale + list(extra))}; run `make student`", file=sys.stderr)
        return 1
    for name in extra if not args.check else ():
        (out_dir / name).unlink()
    print(f"{len(sources)} student notebooks {'checked' if args.check else 'written'} in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
