"""The two baselines: majority class per set, TF-IDF + logistic regression on the training subset."""

from __future__ import annotations

import numpy as np
import pytest

from ftlib.baselines import TfidfLogReg, majority_predictions
from ftlib.data import from_lists


def test_majority_predicts_the_most_common_label_of_the_scored_set():
    ds = from_lists(["a", "b", "c", "d"], [1, 1, 0, 1], ["neg", "pos"])
    assert majority_predictions(ds).tolist() == [1, 1, 1, 1]
    accuracy = (majority_predictions(ds) == np.array(ds.labels)).mean()
    assert accuracy == 0.75  # the share of the majority class, by construction


def test_tfidf_learns_words_that_carry_the_label_and_generalises_to_unseen_sentences():
    pos = ["a wonderful film", "wonderful acting", "truly wonderful", "a great story", "great fun", "great cast"]
    neg = ["an awful film", "awful acting", "truly awful", "a dull story", "dull fun", "dull cast"]
    train = from_lists(pos + neg, [1] * 6 + [0] * 6, ["neg", "pos"])
    test = from_lists(["wonderful and great", "awful and dull", "great", "awful"], [1, 0, 1, 0], ["neg", "pos"])
    model = TfidfLogReg().fit(train)
    assert model.predict(test).tolist() == [1, 0, 1, 0]
    assert model.predict(test).tolist() == TfidfLogReg().fit(train).predict(test).tolist()  # deterministic


def test_tfidf_refuses_a_single_class_training_set():
    with pytest.raises(ValueError, match="at least two"):
        TfidfLogReg().fit(from_lists(["x", "y"], [1, 1], ["neg", "pos"]))
