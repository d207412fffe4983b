"""Checks for chapter 08's exercises (the comparison): one seed or all of them, CKA's kernel form, the Pareto
front, the paired threshold."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..compare import by_strategy, correct, paired
from ..forgetting import linear_cka
from ..stats import mcnemar, paired_bootstrap
from . import expect


def one_seed_differs(records: Sequence[dict], name: str, seed: int = 0) -> bool:
    """Seed `seed` alone: McNemar's p < 0.05 against full fine-tuning on the test reviews."""
    groups = by_strategy(records)
    full, other = correct(groups["full"], "test"), correct(groups[name], "test")
    return mcnemar(full[seed], other[seed]) < 0.05


def all_seeds_differ(records: Sequence[dict], name: str, n_boot: int = 2_000) -> bool:
    """Every seed: the paired bootstrap's 95% interval of the difference to full excludes 0."""
    groups = by_strategy(records)
    _, low, high = paired_bootstrap(*paired(correct(groups["full"], "test"), correct(groups[name], "test")),
                                    n=n_boot)
    return not low <= 0 <= high


def flipped(records: Sequence[dict], n_boot: int = 2_000) -> set[str]:
    """Strategies whose verdict against full changes between seed 0 alone and every seed."""
    groups = by_strategy(records)
    names = [n for n in groups if n != "full" and 0 in correct(groups[n], "test") and len(groups[n]) > 1]
    return {n for n in names if one_seed_differs(records, n) != all_seeds_differ(records, n, n_boot)}


def check_flips(flips, records: Sequence[dict], one_seed_is_enough) -> None:
    """Exercise 1: the set of flipped verdicts, and what it says about one-seed comparisons."""
    expect(isinstance(flips, set | frozenset) and all(isinstance(f, str) for f in flips),
           "flips must be a set of strategy names (a Python set; set() when none)")
    right = flipped(records)
    expect(flips == right, "not the strategies whose verdict changes: for each strategy compare McNemar's p < 0.05 "
                           "on seed 0 alone with the paired-bootstrap interval over every seed excluding 0")
    expect(isinstance(one_seed_is_enough, bool), "one_seed_is_enough must be True or False")
    expect(one_seed_is_enough == (not right), "read your own flips again: did one seed give every verdict that all "
                                              "seeds give?")


def check_cka_kernel(cka_kernel: Callable, seed: int = 0) -> None:
    """Exercise 2: the Gram-matrix form equals linear_cka on random and on scaled data."""
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(50, 7, generator=g), torch.randn(50, 5, generator=g)  # (n, d1), (n, d2)
    expect(abs(cka_kernel(A, B) - linear_cka(A, B)) < 1e-6, "cka_kernel(A, B) differs from linear_cka(A, B): "
                                                            "centre both Gram matrices with C = I - 11^T/n")
    expect(abs(cka_kernel(A, 2 * A) - 1) < 1e-9, "CKA of a matrix with a scaled copy of itself must be 1")
    expect(abs(cka_kernel(A + 3.0, B) - linear_cka(A, B)) < 1e-6, "CKA must ignore a shift of the columns")


def check_pareto_front(pareto_front: Callable) -> None:
    """Exercise 3: the front on frames where domination, ties and single rows each matter."""
    toy = pd.DataFrame({"trainable_percent": [100, 1, 0.1, 50], "test_accuracy": [0.9, 0.85, 0.8, 0.84]},
                       index=list("abcd"))
    expect(pareto_front(toy) == {"a", "b", "c"}, "a strategy is dominated when another is at least as good on "
                                                 "both counts and strictly better on one")
    tie = pd.DataFrame({"trainable_percent": [1.0, 1.0], "test_accuracy": [0.8, 0.8]}, index=["x", "y"])
    expect(pareto_front(tie) == {"x", "y"}, "two identical strategies do not dominate each other")
    one = pd.DataFrame({"trainable_percent": [5.0], "test_accuracy": [0.5]}, index=["only"])
    expect(pareto_front(one) == {"only"}, "a single strategy is on its own front")


def check_paired_threshold(paired_threshold: Callable) -> None:
    """Exercise 4: the formula on hand-counted cases and against the bootstrap."""
    x = np.array([True] * 90 + [False] * 10)
    y = np.array([True] * 80 + [False] * 10 + [True] * 10)  # 10 right only for x, 10 only for y
    expect(abs(paired_threshold(x, y) - 2 * np.sqrt(20) / 100) < 1e-12, "check b, c and N on a small case by hand")
    expect(paired_threshold(x, x.copy()) == 0, "two identical models have no noise between them")
    z = np.array([True] * 70 + [False] * 30)  # right on a subset of x's: b = 20, c = 0
    expect(abs(paired_threshold(x, z) - 2 * np.sqrt(20 - 400 / 100) / 100) < 1e-12,
           "the (b - c)^2 / N term matters when one model is right on more of the discordant examples")
