"""Chapter 09's exercise checks: the right answer passes, an injected wrong one fails without naming the answer."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import fails_quietly, make_batch, make_model
from torch import nn

from ftlib.bitfit import apply_bitfit
from ftlib.exercises import ch09

BITFIT = 768 + 12 * (7 * 768 + 3072)  # bert-base: H + L(7H + I)


def test_bitfit_count_right_and_wrong():
    assert ch09.check_bitfit_count(BITFIT) is None
    wrongs = [12 * (7 * 768 + 3072),  # the embeddings' LayerNorm forgotten
              768 + 12 * (6 * 768 + 3072),  # a LayerNorm forgotten in every layer
              2 * 768 + 12 * (11 * 768 + 3072),  # LayerNorm gains counted too
              BITFIT + 2 * 768 + 2,  # the head included
              float(BITFIT), str(BITFIT)]
    for wrong in wrongs:
        fails_quietly(lambda wrong=wrong: ch09.check_bitfit_count(wrong), BITFIT, f"{BITFIT:,}")


def fold_right(linear, s):
    return linear.weight * s[:, None], linear.bias * s


def fold_input_side(linear, s):  # the feed-forward fold: columns scaled (right shape only on a square layer)
    return linear.weight * s[None, :], linear.bias * s


def fold_no_bias(linear, s):  # the bias forgotten
    return linear.weight * s[:, None], linear.bias


def fold_in_place(linear, s):  # right values, but the layer itself is changed
    linear.weight.mul_(s[:, None])
    linear.bias.mul_(s)
    return linear.weight.clone(), linear.bias.clone()


def fold_transposed(linear, s):  # (d_in, d_out): the layout of x @ W, not nn.Linear's
    return (linear.weight * s[:, None]).T, linear.bias * s


def test_fold_output_scale_right_and_wrong():
    assert ch09.check_fold_output_scale(fold_right) is None
    for wrong in (fold_input_side, fold_no_bias, fold_in_place, fold_transposed, lambda linear, s: linear.weight):
        fails_quietly(lambda wrong=wrong: ch09.check_fold_output_scale(wrong), "[:, None]", "bias * l")


def test_fold_output_scale_hints_point_at_the_mistake():
    assert "weight differs" in str(fails_quietly(lambda: ch09.check_fold_output_scale(fold_input_side)))
    assert "bias differs" in str(fails_quietly(lambda: ch09.check_fold_output_scale(fold_no_bias)))
    assert "in place" in str(fails_quietly(lambda: ch09.check_fold_output_scale(fold_in_place)))


def measured_norms(model, batch) -> dict[str, float]:
    """The exercise's measurement: summed gradient norm per kind of bias after one backward pass under BitFit."""
    probe = apply_bitfit(copy.deepcopy(model))
    logits = probe(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    nn.functional.cross_entropy(logits, batch["labels"]).backward()
    norms = {}
    for name, p in probe.named_parameters():
        if name.startswith("encoder.encoder.layer.") and name.endswith(".bias"):
            kind = name.split(".", 4)[4].removesuffix(".bias")
            norms[kind] = norms.get(kind, 0.0) + p.grad.norm().item()
    return norms


def test_inert_bias_on_a_tiny_bert_measured_as_the_exercise_does():
    model = make_model()
    norms = measured_norms(model, make_batch())
    assert ch09.bias_kinds(model) == set(norms) and len(norms) == 8
    inert = min(norms, key=norms.get)
    assert inert == "attention.self.key"  # softmax ignores a shift shared by every key
    assert ch09.check_inert_bias(inert, norms, model) is None
    for wrong in sorted(set(norms) - {inert}):
        fails_quietly(lambda wrong=wrong: ch09.check_inert_bias(wrong, norms, model), inert, "key")
    fails_quietly(lambda: ch09.check_inert_bias("key", norms, model), inert)  # not a kind's full name
    fails_quietly(lambda: ch09.check_inert_bias(inert, {k: v for k, v in norms.items() if k != "output.dense"}, model))


def fabricated(inert: str, floor: float) -> dict[str, float]:
    kinds = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"]
    return {k: (floor if k == inert else 0.1 + 0.01 * i) for i, k in enumerate(kinds)}


@pytest.mark.parametrize("inert", ["attention.self.value", "output.LayerNorm"])
def test_inert_bias_judged_on_the_students_own_norms(inert):
    """Whatever the numbers say wins: the check holds no answer of its own."""
    model = make_model()
    norms = fabricated(inert, 1e-9)
    assert ch09.check_inert_bias(inert, norms, model) is None
    fails_quietly(lambda: ch09.check_inert_bias("attention.self.key", norms, model), inert)


def test_inert_bias_needs_a_numerically_zero_measurement():
    model = make_model()
    norms = fabricated("attention.self.key", 1e-3)  # smallest, but not numerically zero: a broken measurement
    fails_quietly(lambda: ch09.check_inert_bias("attention.self.key", norms, model))
    fails_quietly(lambda: ch09.check_inert_bias("attention.self.key", dict.fromkeys(norms, 0.0), model))
    bad = {**norms, "attention.self.key": torch.tensor(0.0)}
    fails_quietly(lambda: ch09.check_inert_bias("attention.self.key", bad, model))
