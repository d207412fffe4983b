"""Full fine-tuning: every weight trains (the reference text's baseline for "maximum performance")."""

from __future__ import annotations

from torch import nn

from .lifecycle import Recipe, prepare
from .strategy_tag import tag_strategy

LR = 5e-5  # peak learning rate on MiniLM: BERT's usual 2e-5..5e-5 (Devlin et al. 2019)


def apply_full(model: nn.Module) -> nn.Module:
    """Make every parameter trainable; fit's default groups skip weight decay on biases and LayerNorms.

    Over feature extraction the encoder's eval lock is released; over LoRA, a prefix or adapters it is
    refused (it would train them and the weights under them together), naming how to merge or remove them."""
    prepare(model, "full")
    for p in model.parameters():
        p.requires_grad_(True)
    return tag_strategy(model, "full")


RECIPE = Recipe("full", apply_full, lr=LR, summary="every weight trains")
