"""LoRA+: a larger learning rate for B than for A (Hayou et al. 2024, "LoRA+: Efficient Low Rank
Adaptation of Large Models", arXiv:2402.12354).

A feeds B, B feeds the output: with one learning rate, for wide layers B learns too slowly relative to A.
The paper sets lr_B = ratio * lr_A (ratio 16 is its suggestion). The groups follow
peft.optimizers.create_loraplus_optimizer exactly, including one of its choices: every trainable
1-D tensor (a bias, the head's bias) goes with B; weight decay 0 by default, none on biases/LayerNorm.
"""

from __future__ import annotations

from torch import nn


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases and LayerNorm parameters: transformers' rule that PEFT's LoRA+ groups use."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, nn.LayerNorm) or "bias" in full:
                names.add(full)
    return names


def lora_plus_groups(model: nn.Module, lr: float, ratio: float = 16, weight_decay: float = 0.0) -> list[dict]:
    """AdamW groups: lora_B (and trainable 1-D tensors) at ratio * lr, everything else trainable at lr."""
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio >= 1:
        raise ValueError(f"ratio must be a number >= 1 (lr_B / lr_A; the paper suggests 16), got {ratio!r}")
    no_decay = _no_decay_names(model)
    a, b, b_no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "lora_B" in name or p.ndim == 1:
            (b_no_decay if name in no_decay else b).append(p)
        else:
            a.append(p)
    if not any("lora_B" in n for n, p in model.named_parameters() if p.requires_grad):
        raise ValueError("model has no trainable lora_B; apply_lora(model, ...) first, then lora_plus_groups")
    return [{"params": a, "weight_decay": weight_decay, "lr": lr},
            {"params": b, "weight_decay": weight_decay, "lr": lr * ratio},
            {"params": b_no_decay, "weight_decay": 0.0, "lr": lr * ratio}]
