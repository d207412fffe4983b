"""Two baselines every comparison must beat: always the majority class, and a bag of words.

A fine-tuned transformer is only interesting if it beats (1) the majority class of the set it is
scored on (tweets are about 2/3 positive: 0.68 accuracy for free) and (2) TF-IDF features with a
logistic regression trained on the same training subset (scikit-learn), which costs a second on a CPU.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .data import TextDataset


def majority_predictions(ds: TextDataset) -> np.ndarray:
    """The label most common in `ds` itself, for every example: the 'always say X' accuracy of that set."""
    label = Counter(ds.labels).most_common(1)[0][0]  # ties: the first label seen most often
    return np.full(len(ds), label, dtype=np.int64)


class TfidfLogReg:
    """TF-IDF on word uni- and bigrams + L2 logistic regression; deterministic (liblinear-free lbfgs)."""

    def __init__(self, c: float = 4.0, max_features: int = 50_000):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.pipeline = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=max_features),
            LogisticRegression(C=c, max_iter=2000))

    def fit(self, train: TextDataset) -> TfidfLogReg:
        if len(set(train.labels)) < 2:
            raise ValueError(f"{train.name!r} holds one class only; a classifier needs examples of at least two")
        self.pipeline.fit(list(train.texts), list(train.labels))
        return self

    def predict(self, ds: TextDataset) -> np.ndarray:
        return self.pipeline.predict(list(ds.texts)).astype(np.int64)
