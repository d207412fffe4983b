"""Discriminative learning rates (Howard & Ruder 2018): lower layers hold general features, so they move less.

Layer i of L gets base_lr * decay**(L-1-i), the embeddings base_lr * decay**L, the head base_lr.
ULMFiT's rule of thumb divides by 2.6 per layer (`ULMFIT_DECAY`); for a 6-layer encoder that leaves the
embeddings at 1/312 of the head's rate, so the gentler 0.95 is the default here. ULMFiT's schedule,
`slanted_triangular`, lives with the other schedules in ftlib.optim (importable from here too).
"""

from __future__ import annotations

from torch import nn

from .lifecycle import prepare
from .models import embeddings, encoder_layers
from .optim import NO_DECAY, slanted_triangular
from .strategy_tag import tag_strategy

__all__ = ["ULMFIT_DECAY", "apply_discriminative_lr", "layer_lrs", "layerwise_param_groups", "slanted_triangular"]

ULMFIT_DECAY = 1 / 2.6


def apply_discriminative_lr(model: nn.Module) -> nn.Module:
    """Every parameter trains (as in full fine-tuning); the rates come from layerwise_param_groups."""
    prepare(model, "discriminative-lr")  # releases feature extraction's eval lock; refuses added modules
    for p in model.parameters():
        p.requires_grad_(True)
    return tag_strategy(model, "discriminative-lr")


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
