"""Exercise checks of chapter 05 (LoRA); see ftlib.exercises."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from ..lora import LoRALinear, apply_lora
from . import expect

SCHEMES = ("alpha fixed", "alpha proportional to r", "alpha proportional to sqrt(r)")
TIE = 1.2  # schemes whose spread is within 20% of the steadiest count as equally steady


def check_all_linear_count(n_all_linear: int, model: nn.Module, rank: int = 4) -> None:
    """Exercise 1: the formula's count equals the LoRA parameters apply_lora adds to every linear layer."""
    expect(isinstance(n_all_linear, int) and not isinstance(n_all_linear, bool), "n_all_linear must be an int")
    wrapped = apply_lora(copy.deepcopy(model), rank=rank, targets="all-linear")
    counted = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)
    expect(n_all_linear == counted,
           "wrong count: each wrapped d_in x d_out matrix adds r * (d_in + d_out); the two feed-forward "
           "matrices are not square")


def check_merge_by_hand(W_merged: torch.Tensor, layer: LoRALinear, merged_weight: torch.Tensor) -> None:
    """Exercise 2: the hand-merged weight equals merge_lora's, and the layer itself was left unmerged."""
    expect(isinstance(W_merged, torch.Tensor), "W_merged must be a tensor")
    expect(tuple(W_merged.shape) == tuple(merged_weight.shape),
           "wrong shape: nn.Linear stores its weight as (d_out, d_in); transpose A @ B")
    expect(torch.allclose(W_merged.detach(), merged_weight.detach(), rtol=1.3e-6, atol=1e-5),
           "the values differ from merge_lora's: W + (alpha / r) * (A @ B).T")
    expect(not layer.merged, "compute W' without merging the layer (do not call merge or merge_lora)")


def energy_kept(dW: torch.Tensor, k: int) -> float:
    """Share of ||dW||_F^2 kept by the truncated SVD of rank k, from the reconstruction itself."""
    U, S, Vh = torch.linalg.svd(dW.double())
    dW_k = U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]
    return 1 - ((dW.double() - dW_k).norm() / dW.double().norm()).item() ** 2


def check_rank_90(k90: int, dW: torch.Tensor, share: float = 0.9) -> None:
    """Exercise 3: the smallest rank whose best approximation keeps `share` of the energy."""
    expect(isinstance(k90, int) and not isinstance(k90, bool) and 1 <= k90 <= min(dW.shape),
           f"k90 must be an int between 1 and {min(dW.shape)}")
    expect(energy_kept(dW, k90) >= share - 1e-9, "too small: that rank keeps less than 90% of the energy")
    expect(k90 == 1 or energy_kept(dW, k90 - 1) < share - 1e-9,
           "not the smallest: a lower rank already keeps 90% (cumulative sum of s**2, over the total)")


def spread(norms: Mapping[int, float]) -> float:
    """Largest over smallest update norm across the ranks of a sweep (1 = perfectly steady)."""
    values = list(norms.values())
    return max(values) / min(values)


def check_rank_sweep(verdict: str, results: Mapping[str, Mapping[int, float]]) -> None:
    """Exercise 4: the scheme named steadiest must have (within TIE) the smallest spread in the student's sweep.

    results: scheme -> rank -> ||dW||_F after the same few steps."""
    expect(set(results) <= set(SCHEMES) and len(results) >= 2,
           f"results must map at least two of {list(SCHEMES)} to {{rank: update norm}}")
    expect(all(len(r) >= 2 and all(v > 0 for v in r.values()) for r in results.values()),
           "each scheme needs positive update norms at two ranks or more")
    expect(verdict in results, f"verdict must name one of the schemes you measured: {list(results)}")
    spreads = {s: spread(r) for s, r in results.items()}
    expect(spreads[verdict] <= TIE * min(spreads.values()),
           "not the steadiest in your sweep: for each scheme divide its largest update norm by its smallest "
           "across the ranks; steady means that ratio is close to 1")
