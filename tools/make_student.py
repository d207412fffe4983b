"""Write notebooks/student/: each solution between `# BEGIN SOLUTION` and `# END SOLUTION` becomes a stub,
and every output is cleared, so students start from a clean page. `--check` fails if the copies are stale."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = re.compile(r"^([ \t]*)# BEGIN SOLUTION.*?^[ \t]*# END SOLUTION[^\n]*\n?", re.S | re.M)
STUB = '{indent}raise NotImplementedError("Exercise: replace this line with your solution")\n'


def strip_solutions(source: str) -> str:
    """Replace every marked solution block by a stub, keeping the code around it."""
    return SOLUTION.sub(lambda m: STUB.format(indent=m.group(1)), source).rstrip("\n")


def student_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
        cell.get("metadata", {}).pop("execution", None)
    nb.metadata.pop("widgets", None)
    return nb


def render(path: Path) -> str:
    return nbformat.writes(student_copy(nbformat.read(path, as_version=4))) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 if notebooks/student/ is out of date")
    p.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    args = p.parse_args(argv)
    out_dir = args.notebooks / "student"
    sources = sorted(args.notebooks.glob("[0-9][0-9]_*.ipynb"))
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
