"""Checks for chapter 00's exercises (setup and data): each judges the answer against the data it was read from."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np

from . import expect

Z95 = 1.96  # two-sided 95% quantile of the normal distribution


def coin_band(n: int) -> float:
    """Upper edge of the 95% band of a fair coin's accuracy on n examples: 0.5 + 1.96 sqrt(0.25 / n)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (the number of examples), got {n!r}")
    return 0.5 + Z95 * math.sqrt(0.25 / n)


def _accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.shape[0]} predictions for {labels.shape[0]} labels; pass one per example")
    return float((predictions == labels).mean())


def length_predictions(lengths: Sequence[int], threshold: int, long_label: int) -> np.ndarray:
    """The length rule: `long_label` for texts longer than `threshold` tokens, the other label otherwise."""
    return np.where(np.asarray(lengths) > threshold, long_label, 1 - long_label)


def check_no_model_rules(rules: dict, length_rule: tuple, beats_chance: dict, train_lengths: Sequence[int],
                         train_labels: Sequence[int], test_lengths: Sequence[int],
                         test_labels: Sequence[int]) -> None:
    """Exercise 1: the majority and length rules' accuracies, and the verdicts read off them, are the data's."""
    expect(isinstance(rules, dict) and set(rules) == {"majority", "length"},
           'rules must be a dict with the keys "majority" and "length" (test accuracies)')
    expect(all(isinstance(a, numbers.Real) and not isinstance(a, bool | np.bool_) and 0.0 <= a <= 1.0
               for a in rules.values()),
           "each accuracy in rules must be a float between 0 and 1 (a fraction, not a percentage)")
    majority = int(np.bincount(np.asarray(train_labels), minlength=2).argmax())
    expect(abs(rules["majority"] - _accuracy([majority] * len(test_labels), test_labels)) < 1e-9,
           "the majority rule predicts the most frequent label of the TRAINING split for every test snippet; "
           "its score is the fraction of test snippets with that label")
    expect(isinstance(length_rule, tuple) and len(length_rule) == 2 and isinstance(length_rule[0], numbers.Integral)
           and length_rule[1] in (0, 1), "length_rule must be a tuple (threshold: int, long_label: 0 or 1)")
    threshold, long_label = int(length_rule[0]), int(length_rule[1])
    best_train = max(_accuracy(length_predictions(train_lengths, t, label), train_labels)
                     for t in range(int(np.min(train_lengths)), int(np.max(train_lengths)) + 1) for label in (0, 1))
    train_acc = _accuracy(length_predictions(train_lengths, threshold, long_label), train_labels)
    expect(abs(train_acc - best_train) < 1e-12,
           "choose the threshold and the label of long snippets to maximise accuracy on the TRAINING split: "
           "try every threshold from the shortest to the longest training length, and both labels")
    expect(abs(rules["length"] - _accuracy(length_predictions(test_lengths, threshold, long_label), test_labels))
           < 1e-9, 'rules["length"] must be the TEST accuracy of your length rule (threshold and label kept fixed)')
    expect(isinstance(beats_chance, dict) and set(beats_chance) == {"majority", "length", "length on train"},
           'beats_chance must be a dict with the keys "majority", "length" and "length on train" (bools)')
    expect(all(isinstance(v, bool | np.bool_) for v in beats_chance.values()), "each verdict in beats_chance must be a bool")
    measured = {"majority": (rules["majority"], len(test_labels)), "length": (rules["length"], len(test_labels)),
                "length on train": (train_acc, len(train_labels))}
    for key, (accuracy, n) in measured.items():
        expect(bool(beats_chance[key]) == (accuracy > coin_band(n)),
               f'beats_chance["{key}"] disagrees with your numbers: a rule beats chance when its accuracy is above '
               "0.5 + 1.96 * sqrt(0.25 / n), with n the size of the split it was scored on")


def check_longest(longest_text: str, longest_tokens: int, train_texts: Sequence[str],
                  tokenizer: Callable) -> None:
    """Exercise 2: the training split's longest snippet in tokens ([CLS] and [SEP] counted, no truncation)."""
    expect(isinstance(longest_text, str) and longest_text in train_texts,
           "longest_text must be one of the training split's texts, exactly as stored")
    expect(isinstance(longest_tokens, numbers.Integral) and not isinstance(longest_tokens, bool),
           "longest_tokens must be an int (a number of tokens)")
    expect(len(tokenizer(longest_text)["input_ids"]) == longest_tokens,
           "longest_tokens must be the token count of longest_text, [CLS] and [SEP] included, without truncation")
    expect(longest_tokens == max(len(ids) for ids in tokenizer(list(train_texts))["input_ids"]),
           "a longer snippet exists in the training split: tokenize every training text, not a sample "
           "(and count tokens, not characters or words)")


def check_tiny(tiny) -> None:
    """Exercise 3: a TextDataset of the four reviews with "bad" as class 0 and "good" as class 1."""
    from ..data import TextDataset

    given = {"A joy": "good", "A chore": "bad", "Sharp and funny": "good", "Lifeless": "bad"}
    expect(isinstance(tiny, TextDataset), "tiny must be a TextDataset (build it with from_lists)")
    expect(tiny.texts == tuple(given), "tiny must hold the four reviews, in the order given")
    expect(tiny.label_names == ("bad", "good"), 'class 0 must be "bad" and class 1 "good" (label_names)')
    expect(all(tiny.label_names[y] == given[t] for t, y in zip(tiny.texts, tiny.labels, strict=True)),
           "each review's label must name its class: check which string each label id stands for")
