"""Chapter 05's exercise checks: the right answer passes, an injected wrong one fails without naming the answer."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import make_model

from ftlib.exercises import ch05
from ftlib.lora import apply_lora, lora_layers, merge_lora

H, FF, LAYERS = 32, 37, 2  # tiny BERT: hidden 32, intermediate 37 (not square), 2 blocks


def test_all_linear_count():
    model = make_model(hidden_size=H, intermediate_size=FF, num_hidden_layers=LAYERS)
    r = 4
    right = LAYERS * (4 * r * (H + H) + r * (H + FF) + r * (FF + H))
    assert ch05.check_all_linear_count(right, model, rank=r) is None
    for wrong in (LAYERS * 6 * r * (H + H), LAYERS * 4 * r * (H + H), right // LAYERS, float(right)):
        with pytest.raises(AssertionError) as err:
            ch05.check_all_linear_count(wrong, model, rank=r)
        assert str(right) not in str(err.value) and f"{right:,}" not in str(err.value)


def test_merge_by_hand():
    torch.manual_seed(0)
    model = apply_lora(make_model(), rank=4, alpha=8)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, 0, 0.02)
    name = next(n for n in lora_layers(model) if n.endswith("value"))
    layer = lora_layers(model)[name]
    merged = merge_lora(copy.deepcopy(model))
    merged_weight = merged.get_submodule(name).weight
    right = layer.base.weight + (layer.lora_A @ layer.lora_B).T * (layer.alpha / layer.rank)
    assert ch05.check_merge_by_hand(right, layer, merged_weight) is None
    wrongs = [layer.base.weight + (layer.lora_A @ layer.lora_B) * (layer.alpha / layer.rank),  # not transposed
              layer.base.weight + (layer.lora_A @ layer.lora_B).T,  # no scale
              (layer.lora_A @ layer.lora_B).T * (layer.alpha / layer.rank),  # the update alone
              layer.base.weight[:, :5]]  # wrong shape
    for wrong in wrongs:
        with pytest.raises(AssertionError):
            ch05.check_merge_by_hand(wrong, layer, merged_weight)
    layer.merge()  # merging the layer itself is refused
    with pytest.raises(AssertionError, match="without merging"):
        ch05.check_merge_by_hand(right, layer, merged_weight)


def test_rank_90():
    torch.manual_seed(0)
    s = torch.tensor([10.0, 5.0, 3.0, 1.0, 0.5, 0.2])  # energies 100, 25, 9, 1, ...: 90% needs rank 2
    U, _ = torch.linalg.qr(torch.randn(6, 6))
    V, _ = torch.linalg.qr(torch.randn(6, 6))
    dW = U @ torch.diag(s) @ V.T
    share = torch.cumsum(s**2, 0) / (s**2).sum()
    right = int((share < 0.9).sum()) + 1
    assert right == 2
    assert ch05.check_rank_90(right, dW) is None
    for wrong in (1, 3, 6, 0, 2.0):
        with pytest.raises(AssertionError) as err:
            ch05.check_rank_90(wrong, dW)
        assert not re.search(r"(?<![\w*])2(?![\w%])", str(err.value)), err.value  # never the answer (rank 2)


def sweep(fixed, proportional, root):
    ranks = (2, 8, 32)
    return {"alpha fixed": dict(zip(ranks, fixed, strict=True)), "alpha proportional to r": dict(zip(ranks, proportional, strict=True)),
            "alpha proportional to sqrt(r)": dict(zip(ranks, root, strict=True))}


def test_rank_sweep_judged_on_the_measurements():
    measured = sweep((1.44, 0.72, 0.38), (0.36, 0.72, 1.50), (0.70, 0.72, 0.75))
    assert ch05.check_rank_sweep("alpha proportional to sqrt(r)", measured) is None
    for wrong in ("alpha fixed", "alpha proportional to r"):
        with pytest.raises(AssertionError) as err:
            ch05.check_rank_sweep(wrong, measured)
        assert "sqrt" not in str(err.value)
    coherent = sweep((0.70, 0.72, 0.74), (0.18, 0.72, 2.9), (0.35, 0.72, 1.45))  # a sweep where alpha/r is flat
    assert ch05.check_rank_sweep("alpha fixed", coherent) is None
    with pytest.raises(AssertionError):
        ch05.check_rank_sweep("alpha proportional to sqrt(r)", coherent)


def test_rank_sweep_ties_and_bad_inputs():
    two = {k: v for k, v in sweep((1.0, 0.72, 0.5), (0.5, 0.72, 1.05), (1, 1, 1)).items() if "sqrt" not in k}
    assert ch05.check_rank_sweep("alpha fixed", two) is None  # spreads 2.0 and 2.1: a tie within 20%
    assert ch05.check_rank_sweep("alpha proportional to r", two) is None
    with pytest.raises(AssertionError, match="one of the schemes"):
        ch05.check_rank_sweep("alpha proportional to sqrt(r)", two)  # not measured
    with pytest.raises(AssertionError, match="positive"):
        ch05.check_rank_sweep("alpha fixed", sweep((1, 0, 1), (1, 1, 1), (1, 1, 1)))
