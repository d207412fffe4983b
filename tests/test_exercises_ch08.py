"""Chapter 08's exercise checks pass the right answers and fail injected wrong ones without revealing them."""

import numpy as np
import pandas as pd
import pytest
import torch

from ftlib.exercises import ch08

N = 400


def _record(strategy: str, seed: int, right: np.ndarray) -> dict:
    labels = np.ones(N, int)
    return {"key": {"strategy": strategy, "seed": seed}, "labels": {"test": labels.tolist()},
            "predictions": {"test": np.where(right, 1, 0).tolist()}}


def _right(n_right: int) -> np.ndarray:
    return np.arange(N) < n_right  # (N,): the first n_right reviews are right


@pytest.fixture(scope="module")
def records():
    """lora differs from full on seed 0 only (a flip); adapters equals full; prefix is worse on every seed."""
    recs = [_record("full", s, _right(300)) for s in range(5)]
    recs += [_record("lora", s, _right(260 if s == 0 else 300)) for s in range(5)]
    recs += [_record("adapters", s, _right(300)) for s in range(5)]
    recs += [_record("prefix-tuning", s, _right(240)) for s in range(5)]
    recs += [_record("majority", 0, _right(200))]  # a baseline: one run, never judged
    return recs


def test_the_fabricated_study_has_exactly_one_flip(records):
    assert ch08.one_seed_differs(records, "lora") and not ch08.all_seeds_differ(records, "lora")
    assert ch08.one_seed_differs(records, "prefix-tuning") and ch08.all_seeds_differ(records, "prefix-tuning")
    assert ch08.flipped(records) == {"lora"}


def test_flips_right_answer_passes(records):
    assert ch08.check_flips({"lora"}, records, False) is None


@pytest.mark.parametrize("flips, enough", [(set(), True), (set(), False), ({"lora", "prefix-tuning"}, False),
                                           ({"adapters"}, False), ({"lora"}, True), (["lora"], False)])
def test_flips_wrong_answers_fail_without_naming_the_answer(records, flips, enough):
    with pytest.raises(AssertionError) as err:
        ch08.check_flips(flips, records, enough)
    assert "lora" not in str(err.value)


def test_no_flip_makes_one_seed_enough():
    recs = [_record(n, s, _right(300)) for n in ("full", "lora") for s in range(3)]
    assert ch08.check_flips(set(), recs, True) is None
    with pytest.raises(AssertionError):
        ch08.check_flips(set(), recs, False)


def _cka_right(X, Y):
    X, Y = X.double(), Y.double()
    C = torch.eye(X.shape[0], dtype=torch.float64) - 1.0 / X.shape[0]
    K, M = C @ X @ X.T @ C, C @ Y @ Y.T @ C
    return ((K * M).sum() / (K.norm() * M.norm())).item()


def _cka_uncentred(X, Y):
    X, Y = X.double(), Y.double()
    K, M = X @ X.T, Y @ Y.T
    return ((K * M).sum() / (K.norm() * M.norm())).item()


def test_cka_kernel_check():
    assert ch08.check_cka_kernel(_cka_right) is None
    with pytest.raises(AssertionError):
        ch08.check_cka_kernel(_cka_uncentred)
    with pytest.raises(AssertionError):
        ch08.check_cka_kernel(lambda X, Y: 1.0)


def _front(frame, strict_both=False):
    out = set()
    for name, r in frame.iterrows():
        t, a = frame.trainable_percent, frame.test_accuracy
        if strict_both:
            dominated = (t < r.trainable_percent) & (a > r.test_accuracy)
        else:
            dominated = (t <= r.trainable_percent) & (a >= r.test_accuracy) & (
                (t < r.trainable_percent) | (a > r.test_accuracy))
        if not dominated.any():
            out.add(name)
    return out


def test_pareto_front_check():
    assert ch08.check_pareto_front(_front) is None
    with pytest.raises(AssertionError):
        ch08.check_pareto_front(lambda f: set(f.index))  # everything on the front
    with pytest.raises(AssertionError):
        ch08.check_pareto_front(lambda f: {f.test_accuracy.idxmax()})  # only the most accurate
    assert _front(pd.DataFrame({"trainable_percent": [1.0, 1.0], "test_accuracy": [0.8, 0.9]}, index=["x", "y"])) == {"y"}


def test_paired_threshold_check():
    def right(a, b):
        b_, c_, n = int((a & ~b).sum()), int((~a & b).sum()), len(a)
        return 2 * np.sqrt(b_ + c_ - (b_ - c_) ** 2 / n) / n

    def no_correction(a, b):
        return 2 * np.sqrt(int((a & ~b).sum()) + int((~a & b).sum())) / len(a)

    assert ch08.check_paired_threshold(right) is None
    with pytest.raises(AssertionError):
        ch08.check_paired_threshold(no_correction)
    with pytest.raises(AssertionError):
        ch08.check_paired_threshold(lambda a, b: np.sqrt(2 * 0.9 * 0.1 / len(a)))  # the unpaired threshold
