"""BitFit: train only the bias terms of a frozen encoder, and the head (Ben Zaken, Goldberg & Ravfogel 2022,
"BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models", ACL,
arXiv:2106.10199).

Every affine map in BERT is y = x W^T + b. BitFit freezes W and trains b: each bias moves its
layer's outputs by a learned constant, the same for every token. In a BERT layer that is the
query/key/value biases, the attention-output and the two feed-forward biases and the two LayerNorm
biases (7H + I numbers per layer, plus the embedding LayerNorm's H): about 0.1% of the model.
Nothing is added, so there is nothing to merge; `bitfit_disabled` and `remove_bitfit` put the
starting biases back (see selective.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models import SequenceClassifier, base_encoder
from .params import HEAD_PREFIXES
from .selective import (
    Selection,
    load_selection,
    refuse_incompatible,
    restore,
    save_selection,
    select,
    selection_state_dict,
    swapped_out,
)

PREFIX = "bias"  # a tensor trains under BitFit when a component of its name starts with this (…dense.bias)
ATTR = "bitfit_selection"  # where apply_bitfit records what it chose (a Selection, no parameters)


def _as_tuple(value, name: str) -> tuple[str, ...]:
    value = (value,) if isinstance(value, str) else tuple(value)
    if any(not isinstance(v, str) or not v for v in value):
        raise TypeError(f"{name} must be module-name suffixes (non-empty str), got {value!r}")
    return value


@dataclass(frozen=True)
class BitFitConfig:
    """targets: module-name suffixes whose biases train, e.g. ('query', 'intermediate.dense') for the
    paper's smallest variant; () trains every bias in the encoder (the paper's default)."""

    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _as_tuple(self.targets, "targets"))


def _encoder_biases(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every bias tensor inside the encoder, named as in model.named_parameters() (the head is not here)."""
    prefix = "encoder." if isinstance(model, SequenceClassifier) else ""
    return {prefix + n: p for n, p in base_encoder(model).named_parameters()
            if n.split(".")[-1].startswith(PREFIX) and not (prefix + n).startswith(HEAD_PREFIXES)}


def bias_names(model: nn.Module, config: BitFitConfig = BitFitConfig()) -> list[str]:
    """The parameter names BitFit trains under `config` (head excluded: it always trains)."""
    biases = _encoder_biases(model)
    if not biases:
        raise ValueError(f"{type(base_encoder(model)).__name__} has no bias parameters, so BitFit has nothing to "
                         "train; use apply_ln_tuning or apply_ia3 instead, which need no biases")
    if not config.targets:
        return list(biases)
    chosen = []
    for t in config.targets:
        hits = [n for n in biases if n.rpartition(".")[0] == t or n.rpartition(".")[0].endswith("." + t)]
        if not hits:
            kinds = sorted({".".join(p for p in n.split(".")[:-1] if not p.isdigit()).removeprefix("encoder.")
                            for n in biases})
            raise ValueError(f"target {t!r} matches no module with a bias; modules with biases here (any dotted "
                             f"suffix works): {', '.join(kinds)}; or targets=() for every bias")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def apply_bitfit(model: nn.Module, targets: str | Iterable[str] = ()) -> nn.Module:
    """Freeze everything but the chosen biases and the head; in place. Outputs are unchanged."""
    config = BitFitConfig(targets)
    if isinstance(getattr(model, ATTR, None), Selection):
        raise ValueError("BitFit is already applied to this model; remove_bitfit(model) first to choose again")
    refuse_incompatible(model, "BitFit", None, "apply_bitfit to a fresh model")
    return select(model, ATTR, bias_names(model, config), config)


def remove_bitfit(model: nn.Module) -> nn.Module:
    """Put the starting biases back (the trained ones are discarded) and forget the selection."""
    return restore(model, ATTR, "apply_bitfit")


def bitfit_disabled(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Inside the block the biases are the pre-trained ones: the base model's outputs, exactly."""
    return swapped_out(model, ATTR, "apply_bitfit")


def bitfit_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained biases and the head: everything the task changed."""
    return selection_state_dict(model, ATTR, "apply_bitfit")


def save_bitfit(model: nn.Module, path: str | Path) -> Path:
    """Write bitfit_state_dict to safetensors, with the settings in its metadata."""
    return save_selection(model, path, ATTR, "apply_bitfit", "bitfit")


def load_bitfit(model: nn.Module, path: str | Path) -> nn.Module:
    """Load save_bitfit's file into a model given apply_bitfit with the same targets (checked)."""
    return load_selection(model, path, ATTR, "apply_bitfit", "bitfit")
