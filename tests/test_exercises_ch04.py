"""Chapter 04's exercise checks: the right answer passes, an injected wrong one fails without naming the answer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model

from ftlib.discriminative_lr import layer_lrs, layerwise_param_groups
from ftlib.exercises import ch04

BASE, DECAY = 1e-4, 0.8


def test_layer_lr_right_passes_and_wrong_fails():
    model = make_model(num_hidden_layers=6)
    right = BASE * DECAY ** (6 - 1 - 2)
    assert ch04.check_layer_lr(right, model, BASE, DECAY) is None
    for wrong in (BASE * DECAY**2, BASE * DECAY ** (6 - 2), BASE):  # counted from the bottom, off by one, no decay
        with pytest.raises(AssertionError) as err:
            ch04.check_layer_lr(wrong, model, BASE, DECAY)
        assert f"{right:.3g}" not in str(err.value) and f"{right:.2e}" not in str(err.value)
    assert layer_lrs(model, BASE, DECAY)["layer.2"] == pytest.approx(right)


def frozen_below(model, k, base_lr=1e-4, decay=0.95):
    groups = layerwise_param_groups(model, base_lr, decay)
    frozen = {"embeddings", *(f"layer.{i}" for i in range(k))}
    for g in groups:
        if g["name"].removesuffix(" (no decay)") in frozen:
            g["lr"] = 0.0
    return groups


def frozen_off_by_one(model, k, base_lr=1e-4, decay=0.95):
    return frozen_below(model, k - 1, base_lr, decay)


def frozen_by_dropping(model, k, base_lr=1e-4, decay=0.95):
    """Leaves the frozen groups out instead of giving them lr 0."""
    frozen = {"embeddings", *(f"layer.{i}" for i in range(k))}
    return [g for g in layerwise_param_groups(model, base_lr, decay) if g["name"].removesuffix(" (no decay)") not in frozen]


def test_frozen_below_right_passes_and_wrong_fails():
    model = make_model(num_hidden_layers=6)
    assert ch04.check_frozen_below(frozen_below, model, 3) is None
    for wrong in (frozen_off_by_one, frozen_by_dropping, lambda m, k, b, d: layerwise_param_groups(m, b, d)):
        with pytest.raises(AssertionError):
            ch04.check_frozen_below(wrong, model, 3)


def moved_table(emb, top):
    return {"embeddings": emb, **{f"layer.{i}": 0.01 * (i + 1) for i in range(5)}, "layer.5": top}


RNG = np.random.default_rng(0)
BASE_CORRECT = RNG.random(400) < 0.7


def runs(flip_to_right: int):
    """Two runs on the same 400 examples; the second gets `flip_to_right` more examples right than the first."""
    b = BASE_CORRECT.copy()
    b[np.flatnonzero(~b)[:flip_to_right]] = True
    return {"0.95": BASE_CORRECT, "1/2.6": b}


MOVED = {"0.95": moved_table(0.02, 0.05), "1/2.6": moved_table(0.001, 0.05)}


def test_decay_experiment_no_difference():
    correct = runs(2)  # 2 discordant examples: p = 0.5
    assert ch04.check_decay_experiment("no difference", "1/2.6", correct, MOVED) is None
    for verdict in ("1/2.6", "0.95"):
        with pytest.raises(AssertionError) as err:
            ch04.check_decay_experiment(verdict, "1/2.6", correct, MOVED)
        assert "no difference" not in str(err.value).split("otherwise")[0]


def test_decay_experiment_a_clear_winner():
    correct = runs(40)  # 40 discordant examples, all for 1/2.6: p < 1e-11
    assert ch04.check_decay_experiment("1/2.6", "1/2.6", correct, MOVED) is None
    for verdict in ("no difference", "0.95"):
        with pytest.raises(AssertionError):
            ch04.check_decay_experiment(verdict, "1/2.6", correct, MOVED)


def test_decay_experiment_stiffer_follows_the_measurements():
    correct = runs(0)
    with pytest.raises(AssertionError) as err:
        ch04.check_decay_experiment("no difference", "0.95", correct, MOVED)
    assert "stiffer" in str(err.value) and "1/2.6" not in str(err.value)
    swapped = {"0.95": MOVED["1/2.6"], "1/2.6": MOVED["0.95"]}  # judged on the data, not on the theory
    assert ch04.check_decay_experiment("no difference", "0.95", correct, swapped) is None


def test_decay_experiment_bad_inputs():
    with pytest.raises(AssertionError, match="one of"):
        ch04.check_decay_experiment("ULMFiT", "1/2.6", runs(0), MOVED)
    with pytest.raises(AssertionError, match="keyed"):
        ch04.check_decay_experiment("no difference", "1/2.6", {"0.95": BASE_CORRECT}, MOVED)
