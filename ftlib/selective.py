"""Selective fine-tuning: train a chosen subset of a model's own tensors (BitFit, LayerNorm tuning).

Nothing is added to the model, so there is nothing to merge: the trained tensors are the deployed ones.
What a selective method does keep is a frozen copy of the chosen tensors as they were before training
(non-persistent buffers, so state_dict and checkpoints are unchanged): `remove` puts them back for good,
`disabled` puts them back inside a `with` block only. The copy costs as much memory as the selection
(biases: about 0.1% of MiniLM).

Also here: the check every strategy of this family runs first, refusing a model another strategy has
already changed in a way that cannot compose with freezing everything but one's own tensors.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .params import HEAD_PREFIXES, freeze_except, load_trainable, save_trainable

# Name prefixes of the parameters the additive strategies create (lora.py, prefix_tuning.py, adapters.py,
# ia3.py, prompt_tuning.py): a model holding any of them has been adapted already.
ADDED_PREFIXES = ("lora_", "prefix_", "adapter_", "ia3_", "prompt_")


def added_by_strategies(model: nn.Module) -> list[str]:
    """Parameter-name prefixes of strategies already applied to this model (e.g. ['lora_'])."""
    found = []
    for name, _ in model.named_parameters():
        for part in name.split("."):
            for prefix in ADDED_PREFIXES:
                if part.startswith(prefix) and prefix not in found:
                    found.append(prefix)
    return found


def refuse_incompatible(model: nn.Module, strategy: str, own_prefix: str | None, fix: str) -> None:
    """Refuse models this strategy cannot compose with: feature extraction's frozen encoder, or the
    tensors of another strategy that freezing everything but our own would silently stop training."""
    if getattr(model, "keep_encoder_eval", False):
        raise ValueError(f"{strategy} cannot follow feature extraction: its encoder is frozen in eval mode so its "
                         f"features can be cached once, which {strategy} would invalidate; {fix}")
    others = [p for p in added_by_strategies(model) if p != own_prefix]
    if others:
        raise ValueError(f"{strategy} freezes every tensor but its own, so the {', '.join(others)}* parameters "
                         f"another strategy added to this model would silently stop training; {fix}")


class Selection(nn.Module):
    """The chosen tensors' names, the config that chose them, and frozen copies of their starting values."""

    def __init__(self, model: nn.Module, names: list[str], config) -> None:
        super().__init__()
        self.names, self.config = list(names), config
        params = dict(model.named_parameters())
        for i, name in enumerate(self.names):  # buffers move with model.to(device); persistent=False: not saved
            self.register_buffer(f"original_{i}", params[name].detach().clone(), persistent=False)

    def originals(self) -> list[torch.Tensor]:
        return [getattr(self, f"original_{i}") for i in range(len(self.names))]

    def tensors(self, model: nn.Module) -> list[nn.Parameter]:
        params = dict(model.named_parameters())
        return [params[n] for n in self.names]

    def extra_repr(self) -> str:
        return f"{len(self.names)} tensors, {sum(t.numel() for t in self.originals()):,} values, {self.config}"


def select(model: nn.Module, attr: str, names: list[str], config) -> nn.Module:
    """Record the selection on model.<attr> and freeze everything but it and the head; in place."""
    setattr(model, attr, Selection(model, names, config))
    chosen = set(names)
    return freeze_except(model, lambda n: n in chosen)


def selection(model: nn.Module, attr: str, apply_name: str) -> Selection:
    found = getattr(model, attr, None)
    if not isinstance(found, Selection):
        raise ValueError(f"this model has no {attr.split('_')[0]} selection; call {apply_name}(model) first")
    return found


@torch.no_grad()
def restore(model: nn.Module, attr: str, apply_name: str) -> nn.Module:
    """Put the starting values back and forget the selection (requires_grad flags are left as they are)."""
    sel = selection(model, attr, apply_name)
    for p, original in zip(sel.tensors(model), sel.originals(), strict=True):
        p.copy_(original)
    delattr(model, attr)
    return model


@contextlib.contextmanager
def swapped_out(model: nn.Module, attr: str, apply_name: str) -> Iterator[nn.Module]:
    """Inside the block the chosen tensors hold their starting values: the model as it was before training."""
    sel = selection(model, attr, apply_name)
    params = sel.tensors(model)
    with torch.no_grad():
        trained = [p.detach().clone() for p in params]
        for p, original in zip(params, sel.originals(), strict=True):
            p.copy_(original)
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, t in zip(params, trained, strict=True):
                p.copy_(t)


def selection_state_dict(model: nn.Module, attr: str, apply_name: str) -> dict[str, torch.Tensor]:
    """The trained selection and the head: everything the task changed."""
    sel = selection(model, attr, apply_name)
    return {n: p.detach() for n, p in model.named_parameters() if n in sel.names or n.startswith(HEAD_PREFIXES)}


def save_selection(model: nn.Module, path: str | Path, attr: str, apply_name: str, key: str) -> Path:
    """selection_state_dict to safetensors, with the method's settings under `key` in its metadata."""
    config = selection(model, attr, apply_name).config
    return save_trainable(model, path, tensors=selection_state_dict(model, attr, apply_name),
                          metadata={key: asdict(config)})


def load_selection(model: nn.Module, path: str | Path, attr: str, apply_name: str, key: str) -> nn.Module:
    """Load save_selection's file into a model given the same method with the same targets (checked)."""
    with safe_open(str(path), framework="pt") as f:
        saved = json.loads((f.metadata() or {}).get("ftlib", "{}")).get(key)
    save_name = apply_name.replace("apply_", "save_")
    if saved is None:
        raise ValueError(f"{path} was not written by {save_name} (no {key} settings in its metadata)")
    sel = selection(model, attr, apply_name)
    if list(sel.config.targets) != list(saved["targets"]):
        raise ValueError(f"{path} was saved with targets={tuple(saved['targets'])}, but the model has "
                         f"targets={sel.config.targets}; {apply_name} with the saved targets")
    return load_trainable(model, path)
