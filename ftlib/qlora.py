"""QLoRA: LoRA on top of a frozen 4-bit NF4 base (Dettmers et al. 2023, arXiv:2305.14314).

The base weights are stored as NF4 codes (ftlib.quant) and dequantised on the fly in every forward;
only the LoRA factors (and the head) train, in full precision. Memory for the frozen linear weights
drops from 4 bytes to about 0.52 bytes each; the price is quantisation error in the base and the
dequantisation work in every step. Merging is refused: W + BA would have to be re-quantised, which
throws away the update's small values (or kept in fp32, which undoes the saving).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ftlib.lora import LoRALinear, apply_lora, lora_layers
from ftlib.params import freeze_except
from ftlib.quant import check_quantizable, dequantize_layers, quant_layers, quantize

from .strategy_tag import tag_strategy

MERGE_REFUSED = ("cannot merge LoRA into a 4-bit NF4 base: W + BA needs the full-precision weight, and "
                 "re-quantising it would round the update away. Call dequantize(model) first (a plain fp32 "
                 "model with LoRA layers), then merge_lora(model)")


class QLoRALinear(LoRALinear):
    """LoRALinear whose base is a QuantLinear: same maths, no merging."""

    def merge(self) -> None:
        raise ValueError(MERGE_REFUSED)

    def unmerge(self) -> None:
        raise ValueError("a QLoRA layer is never merged, so there is nothing to unmerge")


def rewrap(layer: LoRALinear, cls: type[LoRALinear], base: nn.Module) -> LoRALinear:
    """The same LoRA factors (the same Parameters) and settings in a layer of class `cls` over `base`."""
    shell = nn.Linear(base.in_features, base.out_features, device="meta")  # no memory, no random draws
    new = cls(shell, layer.rank, layer.alpha, layer.dropout_p)
    new.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("base.")},
                        strict=False, assign=True)
    new.lora_A, new.lora_B = layer.lora_A, layer.lora_B  # keep the very Parameters (and their requires_grad)
    new.base, new.scaling = base, layer.scaling
    return new.train(layer.training)


def apply_qlora(model: nn.Module, rank: int = 8, alpha: float = 16, targets: str | Iterable[str] = ("query", "value"),
                dropout: float = 0.0, blocksize: int = 64, double_quant: bool = True) -> nn.Module:
    """Quantise every encoder nn.Linear to NF4 and put LoRA on the targets, in place.

    targets default to query and value, as the course's `lora`, so the two differ only by the 4-bit base
    (the QLoRA paper targets every linear layer: targets="all-linear").
    """
    if lora_layers(model) and not quant_layers(model):
        raise ValueError("model already has LoRA layers; apply_qlora to a plain model (it adds LoRA itself)")
    check_quantizable(model, blocksize)  # already quantised? blocksize divides every weight? before any change
    apply_lora(model, rank, alpha, targets, dropout)
    quantize(model, blocksize, double_quant)  # every encoder linear, LoRA's bases included
    for name, layer in lora_layers(model).items():
        model.set_submodule(name, rewrap(layer, QLoRALinear, layer.base))
    freeze_except(model, lambda n: any(part.startswith("lora_") for part in n.split(".")))
    return tag_strategy(model, "qlora", {"rank": rank, "alpha": alpha, "targets": targets, "dropout": dropout,
                                         "blocksize": blocksize, "double_quant": double_quant})


def dequantize(model: nn.Module) -> nn.Module:
    """Back to a plain model: fp32 nn.Linear with the dequantised weights, QLoRA layers as LoRALinear."""
    if not quant_layers(model):
        raise ValueError("model has no quantised layers; nothing to dequantize")
    dequantize_layers(model)
    for name, layer in lora_layers(model).items():
        if isinstance(layer, QLoRALinear):
            model.set_submodule(name, rewrap(layer, LoRALinear, layer.base))
    return model
