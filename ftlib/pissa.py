"""PiSSA: start LoRA from the principal singular vectors of W (Meng et al. 2024, "PiSSA: Principal
Singular Values and Singular Vectors Adaptation of Large Language Models", arXiv:2404.02948).

W = U S V^T. LoRA's factors take the top r directions, A = V_r sqrt(S_r / s) and B = sqrt(S_r / s) U_r^T
(s = alpha / r), so s * A B = U_r S_r V_r^T is W's best rank-r part, and the frozen base becomes the
residual W - s (AB)^T. The output is unchanged at init, but training moves the principal part instead
of a zero-initialised one. Consequences: the stored base is no longer W, so an adapter is only
meaningful with its residual base; merging gives W_res + s (AB)^T (correct), but an exported adapter
applied to the ORIGINAL W adds the principal part twice. PEFT: init_lora_weights="pissa".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ftlib.lora import apply_lora, lora_layers

from .strategy_tag import tag_strategy


@torch.no_grad()
def pissa_init(layer: nn.Module) -> None:
    """Factors from the top-r SVD of the layer's weight; the weight becomes the residual."""
    w = layer.base.weight.float()  # (out, in)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)  # u: (out, k), s: (k,), vh: (k, in)
    sr = s[: layer.rank] / layer.scaling  # (r,)
    a = torch.diag(sr.sqrt()) @ vh[: layer.rank]  # (r, in): PEFT's lora_A.weight
    b = u[:, : layer.rank] @ torch.diag(sr.sqrt())  # (out, r): PEFT's lora_B.weight
    layer.lora_A.copy_(a.T)  # (in, r)
    layer.lora_B.copy_(b.T)  # (r, out)
    layer.base.weight.copy_((w - layer.scaling * b @ a).to(layer.base.weight.dtype))


def apply_pissa(model: nn.Module, rank: int = 8, alpha: float = 16,
                targets: str | Iterable[str] = ("query", "value"), dropout: float = 0.0) -> nn.Module:
    """apply_lora, then PiSSA's SVD initialisation of every LoRA layer, in place.

    apply_lora already refuses a rank above min(in, out), the most singular directions a layer has.
    """
    apply_lora(model, rank, alpha, targets, dropout)
    for layer in lora_layers(model).values():
        pissa_init(layer)
    return tag_strategy(model, "pissa", {"rank": rank, "alpha": alpha, "targets": targets, "dropout": dropout})
