"""Chapter 01's exercise checks: the right answer passes, each injected wrong answer fails without naming it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_batch, make_model
from torch import nn

from ftlib.exercises import ch01


def _raises(check, *args, hidden=(), **kwargs):
    """The check fails with AssertionError, and its message names none of the `hidden` values."""
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    message = str(info.value)
    assert message, "a failing check must give a hint"
    for value in hidden:
        assert str(value) not in message, f"the hint reveals {value!r}: {message}"


# --- exercise 1: masked mean pooling ------------------------------------------------------------------------

@pytest.fixture
def pooled():
    """Hidden states (B, T, H) of a tiny BERT on a padded batch, its mask, and the model's own mean features."""
    model = make_model(num_labels=2)
    batch = make_batch()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        hidden = model.encoder(**inputs).last_hidden_state
        return hidden, batch["attention_mask"], model.features(**inputs)


def right_masked_mean(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1)


def test_masked_mean_right_answer_passes(pooled):
    hidden, mask, expected = pooled
    assert mask.min() == 0, "the fixture must contain padding, or an unmasked mean would pass"
    assert ch01.check_masked_mean(right_masked_mean, hidden, mask, expected) is None


@pytest.mark.parametrize("wrong", [
    lambda h, m: h.mean(dim=1),                                          # padding averaged in
    lambda h, m: (h * m.unsqueeze(-1)).sum(1) / h.shape[1],              # divided by T
    lambda h, m: (h * m.unsqueeze(-1)).sum(1),                           # not divided at all
    lambda h, m: h[:, 0],                                                # [CLS] pooling
    lambda h, m: h * m.unsqueeze(-1),                                    # (B, T, H): not pooled
    lambda h, m: right_masked_mean(h, m).tolist(),                       # not a tensor
], ids=["unmasked", "over-T", "sum", "cls", "unpooled", "list"])
def test_masked_mean_wrong_answers_fail(pooled, wrong):
    _raises(ch01.check_masked_mean, wrong, *pooled)


def test_masked_mean_left_padding_probe_catches_a_positional_mean(pooled):
    """A mean over each row's first n positions (n counted from the mask) equals the masked mean on this
    right-padded batch, so only the check's left-padded probe tells it apart."""
    hidden, mask, expected = pooled

    def first_n(h, m):
        return torch.stack([h[i, : int(n)].mean(0) for i, n in enumerate(m.sum(1))])  # (B, H)

    assert torch.allclose(first_n(hidden, mask), expected, atol=1e-5, rtol=1e-4)
    _raises(ch01.check_masked_mean, first_n, hidden, mask, expected)


# --- exercise 2: an SGD head whose training loss beats the AdamW reference ------------------------------------

@pytest.fixture
def features():
    """Two overlapping Gaussian classes in 16 dimensions: a convex problem neither head solves exactly."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    X = torch.randn(200, 16, generator=g) + 0.6 * (2 * y[:, None] - 1) * torch.linspace(1, 0, 16)
    return X, y


def _train_head(X, y, make_optimizer, steps=300):
    torch.manual_seed(0)
    head = nn.Linear(X.shape[1], 2)
    opt = make_optimizer(head.parameters())
    for _ in range(steps):
        loss = F.cross_entropy(head(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def _adamw_head(X, y, lr=1e-3, steps=300):
    return _train_head(X, y, lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01), steps)


def _sgd_head(X, y, lr, steps=300):
    return _train_head(X, y, lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9), steps)


def test_sgd_head_right_answer_passes(features):
    X, y = features
    assert ch01.check_sgd_head(_sgd_head(X, y, lr=0.1), X, y, _adamw_head(X, y)) is None


@pytest.mark.parametrize("wrong", [
    lambda X, y: _sgd_head(X, y, lr=0.1, steps=0),        # never trained
    lambda X, y: _sgd_head(X, y, lr=1e-4),                # a step too small to get anywhere in 300 steps
    lambda X, y: nn.Linear(X.shape[1], 3),                # wrong number of classes
    lambda X, y: nn.Sequential(_sgd_head(X, y, lr=0.1)),  # not an nn.Linear
], ids=["untrained", "tiny-lr", "three-classes", "not-linear"])
def test_sgd_head_wrong_answers_fail(features, wrong):
    X, y = features
    _raises(ch01.check_sgd_head, wrong(X, y), X, y, _adamw_head(X, y))


# --- exercise 3: reading a learning curve ---------------------------------------------------------------------

STEEP = {100: 0.638, 1000: 0.729, 8058: 0.756}   # 1,000 is 2.7 points short: only all data is within 1 point
FLAT = {100: 0.70, 1000: 0.752, 8058: 0.756}     # 1,000 is within 1 point
RISING = {100: 0.60, 1000: 0.62, 8058: 0.70}     # the second step buys more than the first


def _answers(curve):
    n_all = max(curve)
    gain = 100 * (curve[1000] - curve[100])
    enough = min(n for n in curve if curve[n] >= curve[n_all] - 0.01)
    diminishing = curve[n_all] - curve[1000] < curve[1000] - curve[100]
    return gain, enough, diminishing, n_all


@pytest.mark.parametrize("curve", [STEEP, FLAT, RISING], ids=["steep", "flat", "rising"])
def test_learning_curve_right_answers_pass(curve):
    gain, enough, diminishing, n_all = _answers(curve)
    assert ch01.check_learning_curve(curve, gain, enough, diminishing, n_all=n_all) is None
    assert ch01.check_learning_curve(curve, round(gain, 1), enough, diminishing, n_all=n_all) is None


def test_learning_curve_fixtures_cover_both_readings():
    assert {_answers(c)[1] for c in (STEEP, FLAT)} == {1000, 8058}
    assert {_answers(c)[2] for c in (STEEP, RISING)} == {True, False}


@pytest.mark.parametrize("curve", [STEEP, FLAT, RISING], ids=["steep", "flat", "rising"])
def test_learning_curve_wrong_readings_fail(curve):
    gain, enough, diminishing, n_all = _answers(curve)
    hide = [f"{gain:.1f}", enough, str(diminishing)]
    check = ch01.check_learning_curve
    _raises(check, curve, gain / 100, enough, diminishing, n_all=n_all, hidden=hide)  # a fraction, not points
    _raises(check, curve, gain + 1, enough, diminishing, n_all=n_all, hidden=hide)
    _raises(check, curve, gain, 1000 if enough == n_all else n_all, diminishing, n_all=n_all, hidden=hide)
    _raises(check, curve, gain, 100, diminishing, n_all=n_all, hidden=hide)
    _raises(check, curve, gain, enough, not diminishing, n_all=n_all, hidden=hide)
    _raises(check, curve, gain, enough, int(diminishing), n_all=n_all, hidden=hide)


def test_learning_curve_malformed_curves_fail():
    gain, enough, diminishing, n_all = _answers(STEEP)
    _raises(ch01.check_learning_curve, {100: 0.638, 1000: 0.729}, gain, enough, diminishing, n_all=n_all)
    _raises(ch01.check_learning_curve, {n: 100 * a for n, a in STEEP.items()}, gain, enough, diminishing, n_all=n_all)
    _raises(ch01.check_learning_curve, STEEP, gain, enough, diminishing, n_all=2000)  # sizes of another pool
