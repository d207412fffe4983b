"""Discriminative learning rates (Howard & Ruder 2018): lower layers hold general features, so they move less.

Layer i of L gets base_lr * decay**(L-1-i), the embeddings base_lr * decay**L, the head base_lr.
ULMFiT's rule of thumb divides by 2.6 per layer (`ULMFIT_DECAY`); for a 6-layer encoder that leaves the
embeddings at 1/312 of the head's rate, so the gentler 0.95 is the default here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from .models import embeddings, encoder_layers
from .train import NO_DECAY

ULMFIT_DECAY = 1 / 2.6


def apply_discriminative_lr(model: nn.Module) -> nn.Module:
    """Every parameter trains (as in full fine-tuning); the rates come from layerwise_param_groups."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def layer_lrs(model: nn.Module, base_lr: float, decay: float = 0.95) -> dict[str, float]:
    """Learning rate per block name: 'embeddings', 'layer.0' .. 'layer.L-1', 'head'."""
    if base_lr <= 0:
        raise ValueError(f"base_lr must be positive, got {base_lr}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1] (1 = no decay; ULMFiT uses 1/2.6), got {decay}")
    n = len(encoder_layers(model))
    return {"embeddings": base_lr * decay**n, **{f"layer.{i}": base_lr * decay ** (n - 1 - i) for i in range(n)},
            "head": base_lr}


def layerwise_param_groups(model: nn.Module, base_lr: float = 5e-5, decay: float = 0.95,
                           weight_decay: float = 0.01) -> list[dict]:
    """AdamW groups, one (or two, for weight decay) per block, each with its own lr and a 'name'."""
    lrs = layer_lrs(model, base_lr, decay)
    blocks = {"embeddings": embeddings(model), **{f"layer.{i}": m for i, m in enumerate(encoder_layers(model))}}
    owner = {id(p): name for name, block in blocks.items() for p in block.parameters()}
    buckets: dict[tuple[str, bool], list] = {}
    for pname, p in model.named_parameters():  # anything outside embeddings/layers (head, extras) -> head lr
        key = (owner.get(id(p), "head"), pname.endswith(NO_DECAY))
        buckets.setdefault(key, []).append(p)
    return [{"params": ps, "lr": lrs[name], "weight_decay": 0.0 if no_decay else weight_decay,
             "name": f"{name}{' (no decay)' if no_decay else ''}"} for (name, no_decay), ps in buckets.items()]


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
