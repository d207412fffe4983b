"""Checks for chapter 11 (the LoRA family): DoRA's count, DoRA merged by hand, PiSSA's residual, LoRA+ vs LoRA."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import nn

from . import expect, gap_verdict, is_int

LORA_PLUS_VERDICTS = ("LoRA+ lower", "LoRA lower", "within seed noise")



def check_dora_all_linear_count(n_dora_all: int, model: nn.Module, rank: int = 4) -> None:
    """Exercise 1: the formula's count equals the trainable encoder parameters of apply_dora on every linear."""
    from ..dora import apply_dora
    from ..params import count_parameters

    expect(is_int(n_dora_all), "n_dora_all must be an int")
    wrapped = apply_dora(copy.deepcopy(model), rank=rank, targets="all-linear")
    lora_only = sum(p.numel() for n, p in wrapped.encoder.named_parameters() if "lora_A" in n or "lora_B" in n)
    expect(n_dora_all != lora_only, "that is LoRA's count: DoRA also trains one magnitude per output feature")
    expect(n_dora_all == count_parameters(wrapped.encoder).trainable,
           "wrong count: each wrapped layer adds r * (d_in + d_out) for A and B plus one magnitude per output "
           "feature (d_out); the two feed-forward layers have different d_out")


def check_dora_merge(W_dora: torch.Tensor, layer: nn.Module) -> None:
    """Exercise 2: the hand-merged DoRA weight equals what merging the layer gives; the layer stays unmerged."""
    expect(isinstance(W_dora, torch.Tensor), "W_dora must be a tensor")
    expect(not layer.merged, "compute W' without merging the layer (do not call merge or merge_lora)")
    expect(tuple(W_dora.shape) == tuple(layer.base.weight.shape),
           "wrong shape: nn.Linear stores its weight as (d_out, d_in); transpose A @ B")
    reference = copy.deepcopy(layer)
    reference.merge()
    expect(torch.allclose(W_dora.detach(), reference.base.weight.detach(), rtol=1e-5, atol=1e-6),
           "the values differ from the merged layer's: W + scaling * (A @ B).T, each row divided by its own L2 "
           "norm (one per output feature), then multiplied by that row's magnitude")


def check_residual_share(residual_share: float, weight: torch.Tensor, rank: int = 8) -> None:
    """Exercise 3: the share of ||W||_F^2 left in PiSSA's frozen residual at this rank."""
    from ..lora import LoRALinear
    from ..pissa import pissa_init

    expect(isinstance(residual_share, float | int) and not isinstance(residual_share, bool),
           "residual_share must be a number (use .item() on a tensor)")
    expect(0 <= residual_share <= 1, "a share of the energy lies between 0 and 1")
    w = weight.detach().float()  # (out, in)
    layer = LoRALinear(nn.Linear(w.shape[1], w.shape[0], bias=False), rank=rank)
    with torch.no_grad():
        layer.base.weight.copy_(w)
    pissa_init(layer)
    want = (layer.base.weight.norm() ** 2 / w.norm() ** 2).item()
    expect(abs(residual_share - want) < 1e-4,
           "not the residual's share: the residual keeps the singular directions PiSSA did not give to A and B; "
           "the energy ||W||_F^2 is the sum of the squared singular values")


def check_lora_plus(verdict: str, losses: Mapping[str, Mapping[int, float]]) -> None:
    """Exercise 4: LoRA vs LoRA+ (ratio 16), the verdict judged against the student's own per-seed losses.

    losses: {"LoRA": {seed: loss}, "LoRA+": {seed: loss}}, the same seeds for both. A gap between the two means
    no larger than the seed-to-seed spread (max - min over seeds, the larger of the two variants') is noise."""
    expect(set(losses) == {"LoRA", "LoRA+"}, 'losses must map "LoRA" and "LoRA+" to {seed: training loss}')
    seeds = set(losses["LoRA"])
    expect(len(seeds) >= 2 and set(losses["LoRA+"]) == seeds,
           "measure both variants with the same seeds, at least two of them")
    values = [float(v) for per_seed in losses.values() for v in per_seed.values()]
    expect(all(math.isfinite(v) and v >= 0 for v in values), "a cross-entropy loss is a finite number >= 0")
    expect(verdict in LORA_PLUS_VERDICTS, f"verdict must be one of {LORA_PLUS_VERDICTS}")
    mean = {k: sum(v.values()) / len(v) for k, v in losses.items()}
    noise = max(max(v.values()) - min(v.values()) for v in losses.values())
    want = gap_verdict(mean["LoRA"] - mean["LoRA+"], noise, LORA_PLUS_VERDICTS)
    expect(verdict == want, "your verdict does not follow from your numbers: compare the gap between the two "
           "variants' mean losses with how much each variant's loss varies from seed to seed")
