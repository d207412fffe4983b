"""Checks for chapter 06 (prefix tuning): baked size, the additive extended mask, the reparameterisation experiment."""

from __future__ import annotations

import math

import torch

from ftlib.exercises import expect
from ftlib.prefix_tuning import PrefixEncoder, _widen_mask

ARMS = ("mlp, lr 1e-3", "direct, lr 1e-3", "direct, lr 1e-2")  # exercise 3's three runs
LAST = 4  # exercise 3 compares the mean training loss of the last LAST steps


def check_baked_size(baked_bert_base) -> None:
    """Exercise 1: what bake_prefix stores for bert-base (L=12, H=768) with P=10."""
    expect(isinstance(baked_bert_base, int) and not isinstance(baked_bert_base, bool),
           "give the count as an int (a number of stored values)")
    stored = PrefixEncoder(n_layers=12, hidden=768, prefix_length=10, projection_dim=8).all_layers().numel()
    expect(baked_bert_base == stored, "count what bake_prefix keeps: a key AND a value prefix, P rows of width H, "
                                      "in every layer; the MLP is gone after baking")


def _transformers_additive_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """The (B, 1, T, T) additive mask eager attention receives: 0 = attend, float32 min at padded keys."""
    B, T = attention_mask.shape
    cols = torch.where(attention_mask.bool(), 0.0, torch.finfo(torch.float32).min)  # (B, T)
    return cols[:, None, None, :].expand(B, 1, T, T)


def check_additive_mask(fn, attention_mask: torch.Tensor, transformers_mask: torch.Tensor | None = None,
                        prefix_length: int = 3) -> None:
    """Exercise 2: fn(attention_mask, P) must equal the mask ftlib widens from the one transformers made."""
    expect(callable(fn), "additive_extended_mask must be a function (attention_mask, P) -> mask")
    mask = _transformers_additive_mask(attention_mask) if transformers_mask is None else transformers_mask
    T = attention_mask.shape[1]
    reference = _widen_mask(mask, prefix_length, T, True, mask)  # (B, 1, T, P+T)
    got = fn(attention_mask, prefix_length)
    expect(isinstance(got, torch.Tensor), "return a tensor")
    expect(tuple(got.shape) == tuple(reference.shape),
           f"the mask must be (B, 1, T, P+T); got {tuple(got.shape)} for B, T = {tuple(attention_mask.shape)}, "
           f"P = {prefix_length}")
    expect(got.dtype.is_floating_point, "an additive mask holds floats (0 or the most negative float), not booleans")
    expect(bool((got[..., :prefix_length] == reference[..., :prefix_length]).all()),
           "the prefix columns: every query may attend to every prefix key, padded rows included")
    expect(torch.equal(got.to(reference.dtype), reference),
           "the token columns: a padded key gets torch.finfo(torch.float32).min, a real one 0")


def check_prefix_experiment(fastest, mlp_helps, direct_trainable, losses, n_layers: int, hidden: int,
                            prefix_length: int = 20) -> None:
    """Exercise 3: the verdicts must agree with the student's own three loss curves."""
    expect(isinstance(losses, dict) and set(losses) == set(ARMS), f"losses must be a dict with the keys {list(ARMS)}")
    lengths = {len(curve) for curve in losses.values()}
    expect(len(lengths) == 1 and min(lengths) >= LAST, f"every arm needs the same number of steps, at least {LAST}")
    expect(all(math.isfinite(x) for curve in losses.values() for x in curve), "a loss is not finite: lower the rate")
    expect(isinstance(direct_trainable, int) and not isinstance(direct_trainable, bool),
           "direct_trainable is a count (int)")
    expected = 2 * n_layers * prefix_length * hidden + (2 * hidden + 2)
    expect(direct_trainable == expected, "direct_trainable: count what trains once the MLP is baked away and the "
                                         "prefixes themselves train (do not forget the head)")
    final = {arm: sum(curve[-LAST:]) / LAST for arm, curve in losses.items()}
    expect(fastest in ARMS, f"fastest must be one of {list(ARMS)}")
    expect(final[fastest] == min(final.values()),
           f"fastest: compare the mean training loss of the last {LAST} steps of each arm in YOUR losses")
    expect(isinstance(mlp_helps, bool), "mlp_helps is True or False")
    expect(mlp_helps == (final[ARMS[0]] < final[ARMS[1]]),
           "mlp_helps: at the same rate (1e-3), did the reparameterised prefix end with the lower loss in YOUR run?")
