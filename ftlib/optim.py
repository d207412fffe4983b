"""Optimizer groups and learning-rate schedules: what AdamW steps, and how fast, at every step.

A schedule is a function (step, total_steps) -> multiplier of each group's peak rate; `fit` wraps it in a
LambdaLR. Discriminative rates (one group per block) live with their strategy, in ftlib.discriminative_lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def param_groups(model: nn.Module, weight_decay: float = 0.01, params: Iterable | None = None) -> list[dict]:
    """Two AdamW groups: decay for weights, none for biases and LayerNorm weights.

    Every parameter goes in, trainable or not: AdamW skips tensors whose .grad is None, so a layer
    unfrozen later is updated from then on (an optimizer built from only the trainable tensors never sees it).
    """
    named = list(params) if params is not None else list(model.named_parameters())
    decay = [p for n, p in named if not n.endswith(NO_DECAY)]
    no_decay = [p for n, p in named if n.endswith(NO_DECAY)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_warmup_decay(warmup: float = 0.1) -> Callable[[int, int], float]:
    """LR multiplier: linear warm-up over the first `warmup` fraction of steps, then linear decay to 0."""
    def schedule(step: int, total: int) -> float:
        w = max(1, int(total * warmup))
        return (step + 1) / w if step < w else max(0.0, (total - step) / max(1, total - w))
    return schedule


def slanted_triangular(cut_frac: float = 0.1, ratio: float = 32) -> Callable[[int, int], float]:
    """ULMFiT's schedule as an LR multiplier: a short linear rise to 1, a long linear fall to 1/ratio."""
    if not 0 < cut_frac < 1 or ratio < 1:
        raise ValueError(f"need 0 < cut_frac < 1 and ratio >= 1, got {cut_frac}, {ratio}")

    def schedule(step: int, total: int) -> float:
        cut = max(1, math.floor(total * cut_frac))
        # The paper writes the fall's length as cut * (1/cut_frac - 1); that equals total - cut only when
        # total * cut_frac is an integer, and otherwise overshoots into negative rates.
        p = step / cut if step < cut else max(0.0, 1 - (step - cut) / max(1, total - cut))
        return (1 + p * (ratio - 1)) / ratio
    return schedule


def head_lr(optimizer: torch.optim.Optimizer, model: nn.Module) -> float:
    """The current rate of the group holding the head (`classifier.weight`), else the highest group's.

    Group 0 can be anything: under discriminative rates it holds the embeddings, the slowest block."""
    head = getattr(getattr(model, "classifier", None), "weight", None)
    for group in optimizer.param_groups:
        if any(p is head for p in group["params"]):
            return group["lr"]
    return max(group["lr"] for group in optimizer.param_groups)
