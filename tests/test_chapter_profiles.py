"""Every chapter must run on every profile, including `full` (the GPU default), which CI never executes.

`full` keeps all the data: its `max_train`, `max_eval` and `max_test` are None, and `min(profile.max_train, 320)`
raises TypeError there. Each use of those sizes inside min()/max() needs a fallback (`profile.max_train or 320`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from ftlib.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SIZES = {"max_train", "max_eval", "max_test"}


def _python(source: str) -> str:
    """The cell without IPython magics and shell lines (which ast cannot parse)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def unguarded_sizes(source: str) -> list[str]:
    """`profile.max_*` passed straight to min() or max(): None on the full profile, so a TypeError there."""
    found = []
    for node in ast.walk(ast.parse(_python(source))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            for arg in node.args:
                if isinstance(arg, ast.Attribute) and arg.attr in SIZES:
                    found.append(f"line {arg.lineno}: {node.func.id}(... {ast.unparse(arg)} ...) "
                                 f"fails when it is None (profile 'full'): write `{ast.unparse(arg)} or N`")
    return found


def test_the_full_profile_has_no_size_limits():
    """What makes the check necessary: if full ever gets limits, this test says the check can go."""
    assert {getattr(PROFILES["full"], s) for s in SIZES} == {None}


@pytest.mark.parametrize("source, bad", [
    ("small = take(min(profile.max_train, 320))", True),
    ("n = max(10, profile.max_eval)", True),
    ("%matplotlib inline\nn = min(profile.max_test, 5)", True),
    ("small = take(min(profile.max_train or 320, 320))", False),
    ("n = min(400, profile.max_test or 400)", False),
    ("n = min(profile.batch_size, 8)", False),
])
def test_the_check_catches_an_unguarded_size_and_passes_a_fallback(source, bad):
    assert bool(unguarded_sizes(source)) == bad


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_sizes_hold_on_every_profile(chapter):
    nb = nbformat.read(chapter, as_version=4)
    problems = [f"cell {i}: {p}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
                for p in unguarded_sizes(c.source)]
    assert not problems, "\n".join(problems)
