"""Move nbval's comment markers (`# NBVAL_CHECK_OUTPUT` ...) out of cell sources into the cell's tags.

nbval 0.11 reads the same options from cell metadata tags: a marker `NBVAL_X_Y` becomes tag `nbval-x-y`
(nbval/plugin.py: `metadata_tags`, read by `find_metadata_tags`). The reader then sees code without a test
harness comment in it. Only a line that is the marker alone is moved; running the tool twice changes nothing.
`--check` exits 1 and names the chapters that still carry marker comments.

    python tools/nbval_tags.py                 # every notebooks/NN_*.ipynb
    python tools/nbval_tags.py --check
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
MARKERS = ("NBVAL_CHECK_OUTPUT", "NBVAL_IGNORE_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_SKIP")
LINE = re.compile(r"^[ \t]*#[ \t]*(" + "|".join(MARKERS) + r")[ \t]*\n?", re.M)


def tag_for(marker: str) -> str:
    """nbval's metadata tag for a comment marker (its own rule: lower case, '_' -> '-')."""
    return marker.lower().replace("_", "-")


def marked_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Indices of code cells whose source still holds an nbval marker comment."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and LINE.search(c.source)]


def convert(nb: nbformat.NotebookNode) -> int:
    """Move every marker comment line into the cell's tags (in place); return how many cells changed."""
    cells = marked_cells(nb)
    for i in cells:
        cell = nb.cells[i]
        tags = list(cell.metadata.get("tags", []))
        for marker in LINE.findall(cell.source):
            if tag_for(marker) not in tags:
                tags.append(tag_for(marker))
        cell.source = LINE.sub("", cell.source)
        cell.metadata["tags"] = tags
    return len(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks (default: every notebooks/NN_*.ipynb)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a marker comment is left")
    args = p.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    left = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if args.check:
            cells = marked_cells(nb)
            if cells:
                left += 1
                print(f"{path.name}: {len(cells)} cells still start with an nbval comment (cells {cells})",
                      file=sys.stderr)
            continue
        changed = convert(nb)
        if changed:
            nbformat.write(nb, path)
        print(f"{path}: {changed} cells {'converted' if changed else 'already use tags'}")
    if left:
        print("run `python tools/nbval_tags.py` to move the comments into cell tags", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
