"""Exercise checks of chapter 04 (discriminative learning rates); see ftlib.exercises."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..discriminative_lr import layer_lrs
from ..stats import mcnemar
from . import expect

DECAYS = ("0.95", "1/2.6")
VERDICTS = (*DECAYS, "no difference")
ALPHA = 0.05  # a winner is called only when McNemar's p-value is below this


def check_layer_lr(lr_layer2: float, model: nn.Module, base_lr: float, decay: float) -> None:
    """Exercise 1: block 2's rate from the formula equals what layer_lrs gives the same model."""
    expect(isinstance(lr_layer2, int | float) and not isinstance(lr_layer2, bool), "lr_layer2 must be a number")
    expect(math.isclose(lr_layer2, layer_lrs(model, base_lr, decay)["layer.2"], rel_tol=1e-9),
           "not block 2's rate: the top block (L-1) gets base_lr, and each block below gets `decay` times "
           "the rate of the block above")


def check_frozen_below(frozen_below: Callable, model: nn.Module, k: int = 3, base_lr: float = 1e-4,
                       decay: float = 0.95) -> None:
    """Exercise 2: embeddings and blocks 0..k-1 at lr 0, the rest at layer_lrs, every parameter once."""
    optimizer = torch.optim.AdamW(frozen_below(model, k, base_lr, decay))
    got: dict[str, set[float]] = {}
    for g in optimizer.param_groups:
        expect("name" in g, "keep the 'name' of each group of layerwise_param_groups")
        got.setdefault(g["name"].removesuffix(" (no decay)"), set()).add(g["lr"])
    expected = layer_lrs(model, base_lr, decay)
    frozen = {"embeddings", *(f"layer.{i}" for i in range(k))}
    for block, rate in expected.items():
        expect(block in got, f"no group for {block}: start from layerwise_param_groups(model, base_lr, decay)")
        want = 0.0 if block in frozen else rate
        expect(all(math.isclose(lr, want, rel_tol=1e-9, abs_tol=0.0) for lr in got[block]),
               f"{block} has the wrong rate: only the embeddings and blocks below k get 0, the others keep theirs")
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    expect(len(ids) == len(set(ids)) == len(list(model.parameters())),
           "every parameter must sit in exactly one group (set the rate to 0, do not drop the group)")


def embeddings_over_top(moved: Mapping[str, float]) -> float:
    """How far the embeddings moved relative to the top block (relative weight change ratio)."""
    top = max((b for b in moved if b.startswith("layer.")), key=lambda b: int(b.split(".")[1]))
    return moved["embeddings"] / moved[top]


def check_decay_experiment(verdict: str, stiffer: str, correct: Mapping[str, object],
                           moved: Mapping[str, Mapping[str, float]]) -> None:
    """Exercise 3: the verdict and the stiffer decay must follow from the student's own two runs.

    correct: decay -> bool per test example (same examples for both); moved: decay -> block -> relative change."""
    expect(set(correct) == set(DECAYS) and set(moved) == set(DECAYS),
           f"correct and moved need one entry per decay, keyed {list(DECAYS)}")
    expect(stiffer in DECAYS, f"stiffer must be one of {list(DECAYS)}")
    ratios = {d: embeddings_over_top(moved[d]) for d in DECAYS}
    expect(stiffer == min(ratios, key=ratios.get),
           "stiffer: compare, for each decay, how far the embeddings moved relative to the top block "
           "(embeddings / layer.5 in your `moved` table); the stiffer run is the one whose bottom moved least")
    expect(verdict in VERDICTS, f"verdict must be one of {list(VERDICTS)}")
    a, b = (torch.as_tensor(correct[d]).bool() for d in DECAYS)
    p = mcnemar(a.numpy(), b.numpy())
    if p >= ALPHA:
        right = "no difference"
    else:
        right = DECAYS[0] if a.float().mean() > b.float().mean() else DECAYS[1]
    expect(verdict == right,
           f"verdict: compare the two runs on the same test examples (ftlib.stats.mcnemar); name a winner only "
           f"when p < {ALPHA}, otherwise the test set cannot tell them apart")
