"""LayerNorm tuning: train only the LayerNorm gains and biases of a frozen encoder, and the head
(Zhao et al. 2024, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning",
ICLR, arXiv:2312.11420; PEFT's LNTuningConfig).

A LayerNorm computes  y = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta  per token: gamma rescales
and beta shifts each of the H features after normalisation. Training only gamma and beta (2H numbers
per LayerNorm, 2 per BERT layer plus one after the embeddings) re-weights the features every block
hands to the next. PEFT wraps each norm and trains a copy of it; here the norm's own tensors train,
which selects the same numbers (tested: same count, same outputs after the same perturbation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models import SequenceClassifier, base_encoder
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

PREFIX = "LayerNorm"  # BERT/RoBERTa's name for their norms; PEFT's LNTuningConfig(target_modules=["LayerNorm"])
ATTR = "ln_tuning_selection"  # where apply_ln_tuning records what it chose (a Selection, no parameters)


@dataclass(frozen=True)
class LNTuningConfig:
    """targets: module-name suffixes naming the norms to train; the default picks every BERT/RoBERTa LayerNorm."""

    targets: tuple[str, ...] = (PREFIX,)

    def __post_init__(self) -> None:
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or any(not isinstance(t, str) or not t for t in targets):
            raise TypeError(f"targets must be module-name suffixes (non-empty str), got {self.targets!r}")
        object.__setattr__(self, "targets", targets)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # PEFT's rule for a list of target_modules


def norm_modules(model: nn.Module, config: LNTuningConfig = LNTuningConfig()) -> dict[str, nn.LayerNorm]:
    """The encoder's LayerNorms the config names, by module name as in model.named_modules()."""
    prefix = "encoder" if isinstance(model, SequenceClassifier) else ""
    norms = {n: m for n, m in base_encoder(model).named_modules(prefix=prefix) if isinstance(m, nn.LayerNorm)}
    if not norms:
        raise ValueError(f"{type(base_encoder(model)).__name__} has no nn.LayerNorm, so LayerNorm tuning has "
                         "nothing to train; use apply_bitfit or apply_ia3 instead")
    chosen = {}
    for t in config.targets:
        hits = {n: m for n, m in norms.items() if _matches(n, t)}
        if not hits:
            kinds = sorted({".".join(p for p in n.split(".") if not p.isdigit()).removeprefix("encoder.")
                            for n in norms})
            raise ValueError(f"target {t!r} matches no nn.LayerNorm in the encoder; LayerNorms here (any dotted "
                             f"suffix works): {', '.join(kinds)}")
        chosen.update(hits)
    return chosen


def apply_ln_tuning(model: nn.Module, targets: str | Iterable[str] = (PREFIX,)) -> nn.Module:
    """Freeze everything but the chosen LayerNorms' gains and biases and the head; in place."""
    config = LNTuningConfig(targets)
    if isinstance(getattr(model, ATTR, None), Selection):
        raise ValueError("LayerNorm tuning is already applied to this model; remove_ln_tuning(model) first")
    refuse_incompatible(model, "LayerNorm tuning", None, "apply_ln_tuning to a fresh model")
    norms = norm_modules(model, config)
    names = [f"{m}.{p}" for m, norm in norms.items() for p, _ in norm.named_parameters()]
    if not names:
        raise ValueError("the chosen LayerNorms have no gain or bias (elementwise_affine=False): nothing to train")
    return select(model, ATTR, names, config)


def remove_ln_tuning(model: nn.Module) -> nn.Module:
    """Put the starting gains and biases back (the trained ones are discarded) and forget the selection."""
    return restore(model, ATTR, "apply_ln_tuning")


def ln_tuning_disabled(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Inside the block the norms hold their pre-trained values: the base model's outputs, exactly."""
    return swapped_out(model, ATTR, "apply_ln_tuning")


def ln_tuning_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained gains and biases and the head: everything the task changed."""
    return selection_state_dict(model, ATTR, "apply_ln_tuning")


def save_ln_tuning(model: nn.Module, path: str | Path) -> Path:
    """Write ln_tuning_state_dict to safetensors, with the settings in its metadata."""
    return save_selection(model, path, ATTR, "apply_ln_tuning", "ln_tuning")


def load_ln_tuning(model: nn.Module, path: str | Path) -> nn.Module:
    """Load save_ln_tuning's file into a model given apply_ln_tuning with the same targets (checked)."""
    return load_selection(model, path, ATTR, "apply_ln_tuning", "ln_tuning")
