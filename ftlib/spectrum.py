"""Why LoRA works: the update full fine-tuning makes to a weight matrix has low intrinsic rank.

For dW = W_after - W_before, the singular values s_1 >= s_2 >= ... tell how much of dW a rank-r
approximation keeps: energy(r) = sum_{i<=r} s_i^2 / sum_i s_i^2 (Eckart-Young). Hu et al. 2021 (sec. 7)
and Aghajanyan et al. 2021 report that most of the energy sits in the first few directions.
"""

from __future__ import annotations

import torch
from torch import nn


def weight_updates(before: dict[str, torch.Tensor], after: nn.Module, suffixes=("query.weight", "value.weight")):
    """dW per matching 2-D weight, (out, in) each, for a model fine-tuned from the `before` state dict."""
    now = dict(after.named_parameters())
    return {n: (now[n].detach().float().cpu() - w.float().cpu()) for n, w in before.items()
            if n.endswith(tuple(suffixes)) and w.dim() == 2 and n in now}


def singular_values(delta: torch.Tensor) -> torch.Tensor:
    """Singular values of one update, largest first, (min(out, in),)."""
    return torch.linalg.svdvals(delta.double()).float()


def energy_kept(s: torch.Tensor, rank: int) -> float:
    """Fraction of ||dW||_F^2 that the best rank-`rank` approximation keeps."""
    e = s.double() ** 2
    return (e[:rank].sum() / e.sum().clamp(min=1e-30)).item()


def rank_for_energy(s: torch.Tensor, fraction: float = 0.9) -> int:
    """Smallest rank whose best approximation keeps `fraction` of the update's energy."""
    cum = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp(min=1e-30)
    return int((cum < fraction).sum().item()) + 1
