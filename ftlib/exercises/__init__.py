"""Checks for the chapters' exercises, one module per chapter (`ftlib.exercises.ch05` ...).

A chapter's check cell calls one function with the student's answer and the data the answer must agree
with (often the student's own measurements), e.g. `ch05.check_rank_sweep(verdict, results)`. Keeping the
logic here lets tests/test_exercises_chNN.py inject a wrong answer into every check without running the
chapter. A check raises AssertionError with a hint when the answer is wrong and never prints, returns or
names the expected value; it returns None when the answer is right.
"""

from __future__ import annotations


def expect(condition: bool, hint: str) -> None:
    """Fail with a hint (never the answer) when the condition does not hold."""
    if not condition:
        raise AssertionError(hint)


def is_int(x) -> bool:
    """An int answer, not a bool (True == 1 would pass a count check otherwise)."""
    return isinstance(x, int) and not isinstance(x, bool)


def gap_verdict(gap: float, noise: float, verdicts: tuple[str, str, str]) -> str:
    """The verdict a gap supports: verdicts = (gap > 0 wins, gap < 0 wins, within noise); |gap| <= noise is noise."""
    above, below, within = verdicts
    if abs(gap) <= noise:
        return within
    return above if gap > 0 else below
