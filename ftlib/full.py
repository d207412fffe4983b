"""Full fine-tuning: every weight trains (the reference text's baseline for "maximum performance")."""

from __future__ import annotations

from torch import nn

from .strategy_tag import tag_strategy


def apply_full(model: nn.Module) -> nn.Module:
    """Make every parameter trainable; fit's default groups skip weight decay on biases and LayerNorms."""
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "keep_encoder_eval"):
        model.keep_encoder_eval = False
    return tag_strategy(model, "full")
