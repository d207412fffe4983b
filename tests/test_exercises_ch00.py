"""Chapter 00's exercise checks: the right answer passes, each injected wrong answer fails without naming it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftlib.data import from_lists
from ftlib.exercises import ch00


def _raises(check, *args, hidden=()):
    """The check fails with AssertionError, and its message names none of the `hidden` values."""
    with pytest.raises(AssertionError) as info:
        check(*args)
    message = str(info.value)
    assert message, "a failing check must give a hint"
    for value in hidden:
        assert str(value) not in message, f"the hint reveals {value!r}: {message}"


# --- exercise 1: rules that read no words, against a coin's 95% band ----------------------------------------

def _split(n, seed, signal):
    """Token lengths and labels where long snippets lean negative by `signal` (0: no signal)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, size=n)
    p_negative = 0.5 + signal * np.sign(lengths - 30)
    labels = (rng.random(n) > p_negative).astype(int)  # 0 (negative) with probability p_negative
    return lengths, labels


def _solve(train_lengths, train_labels, test_lengths, test_labels):
    """The answer by brute force, written independently of ftlib.exercises.ch00."""
    majority = int(np.argmax(np.bincount(train_labels)))
    rules = {"majority": float(np.mean(test_labels == majority))}

    def acc(rule, lengths, labels):
        t, long_label = rule
        return float(np.mean(np.where(lengths > t, long_label, 1 - long_label) == labels))

    candidates = [(t, c) for t in range(train_lengths.min(), train_lengths.max() + 1) for c in (0, 1)]
    rule = max(candidates, key=lambda r: acc(r, train_lengths, train_labels))
    rules["length"] = acc(rule, test_lengths, test_labels)
    edge = lambda n: 0.5 + 1.96 * math.sqrt(0.25 / n)  # noqa: E731
    beats = {"majority": rules["majority"] > edge(len(test_labels)), "length": rules["length"] > edge(len(test_labels)),
             "length on train": acc(rule, train_lengths, train_labels) > edge(len(train_labels))}
    return rules, (int(rule[0]), int(rule[1])), beats


@pytest.fixture(params=[0.0, 0.15], ids=["no-signal", "length-signal"])
def data(request):
    train = _split(3000, 0, request.param)
    test = _split(500, 1, request.param)
    return (*train, *test)


def test_coin_band_is_the_normal_approximation():
    assert ch00.coin_band(1008) == pytest.approx(0.5 + 1.96 * 0.5 / math.sqrt(1008))
    assert ch00.coin_band(1) > ch00.coin_band(100) > ch00.coin_band(10_000) > 0.5
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive int"):
            ch00.coin_band(bad)


def test_rules_right_answer_passes(data):
    rules, rule, beats = _solve(*data)
    assert ch00.check_no_model_rules(rules, rule, beats, *data) is None
    # numpy scalars (what np.argmax and comparisons return) are accepted too
    np_rule = (np.int64(rule[0]), np.int64(rule[1]))
    np_beats = {k: np.bool_(v) for k, v in beats.items()}
    assert ch00.check_no_model_rules(rules, np_rule, np_beats, *data) is None


def test_length_signal_fixture_has_a_verdict_that_differs_from_the_null():
    """The two fixtures exercise both verdicts: the signal beats chance on test, the null does not."""
    _, _, null = _solve(*_split(3000, 0, 0.0), *_split(500, 1, 0.0))
    _, _, signal = _solve(*_split(3000, 0, 0.15), *_split(500, 1, 0.15))
    assert signal["length"] and not null["length"]


def test_rules_wrong_majority_fails(data):
    rules, rule, beats = _solve(*data)
    for wrong in (0.5, 1 - rules["majority"], 100 * rules["majority"]):
        _raises(ch00.check_no_model_rules, {**rules, "majority": wrong}, rule, beats, *data,
                hidden=[rules["majority"], round(rules["majority"], 3)])


def test_rules_length_scored_on_train_fails(data):
    rules, rule, beats = _solve(*data)
    train_lengths, train_labels = data[0], data[1]
    on_train = float(np.mean(np.where(train_lengths > rule[0], rule[1], 1 - rule[1]) == train_labels))
    _raises(ch00.check_no_model_rules, {**rules, "length": on_train}, rule, beats, *data,
            hidden=[rules["length"], round(rules["length"], 3)])


def test_rules_threshold_not_chosen_on_train_fails(data):
    rules, (t, long_label), beats = _solve(*data)
    for wrong in [(t + 7, long_label), (t, 1 - long_label)]:
        _raises(ch00.check_no_model_rules, rules, wrong, beats, *data, hidden=[t])


def test_rules_flipped_verdict_fails(data):
    rules, rule, beats = _solve(*data)
    for key in beats:
        _raises(ch00.check_no_model_rules, rules, rule, {**beats, key: not beats[key]}, *data,
                hidden=[f"{key}\": {beats[key]}"])


def test_rules_malformed_answers_fail(data):
    rules, rule, beats = _solve(*data)
    _raises(ch00.check_no_model_rules, {"majority": rules["majority"]}, rule, beats, *data)
    _raises(ch00.check_no_model_rules, rules, [rule[0], rule[1]], beats, *data)
    _raises(ch00.check_no_model_rules, rules, rule, {"majority": True, "length": False}, *data)
    _raises(ch00.check_no_model_rules, rules, rule, {k: int(v) for k, v in beats.items()}, *data)


# --- exercise 2: the longest training snippet --------------------------------------------------------------

class WhitespaceTokenizer:
    """[CLS] + words + [SEP], with the Hugging Face call shape (a str or a list of str)."""

    def __call__(self, texts):
        ids = lambda t: [101, *range(len(t.split())), 102]  # noqa: E731
        return {"input_ids": ids(texts) if isinstance(texts, str) else [ids(t) for t in texts]}


TEXTS = ("short one", "the longest text of all by words", "a bit longer here", "characters-but-one-word-only-xx")


def test_longest_right_answer_passes():
    assert ch00.check_longest(TEXTS[1], 9, TEXTS, WhitespaceTokenizer()) is None


@pytest.mark.parametrize("text, tokens", [
    (TEXTS[2], 6),    # the second longest
    (TEXTS[1], 7),    # [CLS] and [SEP] not counted
    (TEXTS[3], 33),   # longest in characters
    (TEXTS[1], len(TEXTS[1])),  # characters counted
    ("not in the split", 9),
    (TEXTS[1], 9.0),  # not an int
])
def test_longest_wrong_answers_fail(text, tokens):
    _raises(ch00.check_longest, text, tokens, TEXTS, WhitespaceTokenizer(), hidden=["9 tokens", "'the longest text"])


# --- exercise 3: a TextDataset with chosen class ids ---------------------------------------------------------

REVIEWS = ["A joy", "A chore", "Sharp and funny", "Lifeless"]


def test_tiny_right_answer_passes():
    assert ch00.check_tiny(from_lists(REVIEWS, ["good", "bad", "good", "bad"], label_names=["bad", "good"])) is None
    assert ch00.check_tiny(from_lists(REVIEWS, [1, 0, 1, 0], label_names=["bad", "good"])) is None


@pytest.mark.parametrize("wrong", [
    lambda: from_lists(REVIEWS, ["good", "bad", "good", "bad"], label_names=["good", "bad"]),  # classes swapped
    lambda: from_lists(REVIEWS, [0, 1, 0, 1], label_names=["bad", "good"]),  # labels swapped
    lambda: from_lists(REVIEWS[::-1], ["bad", "good", "bad", "good"], label_names=["bad", "good"]),  # order
    lambda: (tuple(REVIEWS), (1, 0, 1, 0)),  # not a TextDataset
])
def test_tiny_wrong_answers_fail(wrong):
    _raises(ch00.check_tiny, wrong(), hidden=["(1, 0, 1, 0)"])
