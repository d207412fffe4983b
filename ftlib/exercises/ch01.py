"""Checks for chapter 01's exercises (feature extraction): each judges the answer against the student's own data."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import expect

WITHIN = 0.01  # "within 1 point" of the full-data accuracy, as a fraction


def check_masked_mean(masked_mean: Callable, hidden: torch.Tensor, mask: torch.Tensor,
                      expected: torch.Tensor) -> None:
    """Exercise 1: masked_mean(hidden (B, T, H), mask (B, T)) -> (B, H) averages real tokens only."""
    out = masked_mean(hidden, mask)
    expect(isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(hidden.shape[::2]),
           "masked_mean must return a tensor of shape (B, H): one vector per text, averaged over T")
    expect(torch.allclose(out, expected, atol=1e-5, rtol=1e-4),
           "masked_mean differs from the pooled features: average over the tokens whose mask is 1, "
           "dividing by their number (the mask's row sum), not by T")
    extra = torch.randn(hidden.shape[0], 5, hidden.shape[2], dtype=hidden.dtype, device=hidden.device)  # (B, 5, H)
    padded = masked_mean(torch.cat([extra, hidden], dim=1), torch.cat([torch.zeros_like(mask[:, :5]), mask], dim=1))
    expect(torch.allclose(padded, out, atol=1e-5, rtol=1e-4),
           "padding positions in front (mask 0, as left-padding tokenizers make) changed masked_mean's output: "
           "use the mask itself, not the positions or the number of tokens, to choose what is averaged")


def check_sgd_head(sgd_head: nn.Module, X: torch.Tensor, y: torch.Tensor, reference: nn.Module) -> None:
    """Exercise 2: an SGD-trained linear head ends with a lower training loss than the AdamW reference head."""
    classes = int(y.max()) + 1
    expect(isinstance(sgd_head, nn.Linear) and tuple(sgd_head.weight.shape) == (classes, X.shape[1]),
           f"sgd_head must be an nn.Linear from the {X.shape[1]} features to the {classes} classes")
    with torch.no_grad():
        loss, ref_loss = F.cross_entropy(sgd_head(X), y).item(), F.cross_entropy(reference(X), y).item()
    expect(loss < ref_loss,
           "your head's training loss is not below the AdamW reference's: check that the loop steps the "
           "optimizer on sgd_head's parameters, and try a larger learning rate")


def check_learning_curve(curve: dict, gain_10x: float, smallest_within_1pt: int, diminishing: bool,
                         n_all: int) -> None:
    """Exercise 3: the three readings of a learning curve agree with the student's own measured curve."""
    sizes = (100, 1000, n_all)
    expect(isinstance(curve, dict) and set(curve) == set(sizes),
           f"curve must map each training-set size (100, 1000 and all {n_all:,}) to a validation accuracy")
    expect(all(isinstance(a, numbers.Real) and not isinstance(a, bool) and 0.0 <= a <= 1.0 for a in curve.values()),
           "each accuracy in curve must be a float between 0 and 1 (a fraction, not a percentage)")
    expect(isinstance(gain_10x, numbers.Real) and abs(gain_10x - 100 * (curve[1000] - curve[100])) < 0.05,
           "gain_10x must be what going from 100 to 1,000 examples buys, in percentage points "
           "(e.g. 3.5 for 3.5 points), read off your curve")
    enough = min(n for n in sizes if curve[n] >= curve[n_all] - WITHIN - 1e-12)
    expect(smallest_within_1pt == enough,
           "smallest_within_1pt must be the smallest size in your curve whose accuracy is at most 1 point "
           "(0.01) below the all-data accuracy")
    expect(isinstance(diminishing, bool), "diminishing must be a bool")
    expect(diminishing == (curve[n_all] - curve[1000] < curve[1000] - curve[100]),
           "diminishing must say whether the step from 1,000 to all examples bought fewer points than the step "
           "from 100 to 1,000, on your curve")
