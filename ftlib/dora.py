"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank
Adaptation", arXiv:2402.09353).

Each output unit's weight row is split into a length and a direction: W' = m * (W + dW) / ||W + dW||,
with ||.|| the L2 norm of each row of nn.Linear's (out, in) weight (one per output feature; the
paper's "column norm" in its (in, out) layout, and PEFT's `norm(dim=1)`), dW = s (AB)^T the LoRA update
and m (out,) trained, initialised to ||W|| so the layer starts unchanged. As in the paper (sec. 4.3)
and PEFT, the norm is treated as a constant in the backward pass (detached): it still follows dW in
the forward pass but gets no gradient, which saves memory and barely changes the result.
PEFT: LoraConfig(use_dora=True); the magnitude is PEFT's lora_magnitude_vector.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ftlib.lora import LoRALinear, apply_lora, lora_layers
from ftlib.qlora import rewrap

from .strategy_tag import tag_strategy


class DoRALinear(LoRALinear):
    """LoRALinear plus a trained magnitude per output feature; the direction is W + dW, row-normalised."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__(base, rank, alpha, dropout)
        self.lora_magnitude = nn.Parameter(self.weight_norm())  # (out,): ||W|| at init (B = 0)
        self._merged_norm: torch.Tensor | None = None  # the norm used at merge time, for unmerge

    def weight_norm(self) -> torch.Tensor:
        """||W + dW|| per output feature (out,), detached: a constant for backward, as in PEFT."""
        return torch.linalg.norm(self.base.weight + self.delta_weight().detach(), dim=1).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # (B, T, out): x W^T + b
        if self.merged:
            return out
        bias = self.base.bias if self.base.bias is not None else 0
        xd = self.lora_dropout(x)
        # with dropout on, the direction term sees the same dropped x as the update (PEFT does the same)
        wx = out - bias if isinstance(self.lora_dropout, nn.Identity) or not self.training else F.linear(xd, self.base.weight)
        scale = self.lora_magnitude / self.weight_norm()  # (out,)
        lora = xd @ self.lora_A @ self.lora_B * self.scaling  # (B, T, out)
        return out + (scale - 1) * wx + scale * lora  # = bias + scale * (x W^T + x dW^T) without dropout

    @torch.no_grad()
    def merge(self) -> None:
        """W <- m * (W + dW) / ||W + dW||: same outputs, a plain nn.Linear."""
        if not self.merged:
            self._merged_norm = self.weight_norm()
            w = self.base.weight
            w.copy_((self.lora_magnitude / self._merged_norm)[:, None] * (w + self.delta_weight()))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.base.weight
            w.copy_(w / (self.lora_magnitude / self._merged_norm)[:, None] - self.delta_weight())
            self.merged, self._merged_norm = False, None


def apply_dora(model: nn.Module, rank: int = 8, alpha: float = 16,
               targets: str | Iterable[str] = ("query", "value"), dropout: float = 0.0) -> nn.Module:
    """apply_lora, then each LoRA layer becomes a DoRALinear (same A, B; magnitude = ||W||), in place."""
    apply_lora(model, rank, alpha, targets, dropout)
    for name, layer in lora_layers(model).items():
        dora = rewrap(layer, DoRALinear, layer.base)
        dora.lora_magnitude = nn.Parameter(dora.weight_norm())  # the shell's was computed on an empty weight
        model.set_submodule(name, dora)
    return tag_strategy(model, "dora", {"rank": rank, "alpha": alpha, "targets": targets, "dropout": dropout})


def dora_layers(model: nn.Module) -> dict[str, DoRALinear]:
    return {n: m for n, m in lora_layers(model).items() if isinstance(m, DoRALinear)}
