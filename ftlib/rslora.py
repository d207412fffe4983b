"""rsLoRA: rank-stabilised scaling alpha / sqrt(r) instead of alpha / r (Kalajdzievski 2023,
"A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA", arXiv:2312.03732).

With alpha / r the update's size, and so its effective learning rate, shrinks as r grows, so a larger
rank learns more slowly; alpha / sqrt(r) keeps the update's scale steady in r. Same layers, same
parameters, same merge: only the constant differs (PEFT: LoraConfig(use_rslora=True)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn

from ftlib.lora import apply_lora, lora_layers

from .strategy_tag import tag_strategy


def rslora_scaling(alpha: float, rank: int) -> float:
    """The constant that multiplies x A B."""
    return alpha / math.sqrt(rank)


def apply_rslora(model: nn.Module, rank: int = 8, alpha: float = 16,
                 targets: str | Iterable[str] = ("query", "value"), dropout: float = 0.0) -> nn.Module:
    """apply_lora, with every layer scaled by alpha / sqrt(rank), in place."""
    apply_lora(model, rank, alpha, targets, dropout)
    for layer in lora_layers(model).values():
        layer.scaling = rslora_scaling(alpha, rank)
    return tag_strategy(model, "lora-rs", {"rank": rank, "alpha": alpha, "targets": targets, "dropout": dropout})
