"""Parameter accounting, freezing and saving what trains, shared by every strategy."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

HEAD_PREFIXES = ("classifier.",)  # the task head always trains and is always saved

# The parameter-name prefix of each added-module strategy, defined once: freezing selects a strategy's
# tensors by it, saving keeps them by it (trained or not: a baked prefix is frozen yet holds the task) and
# checkpoints recognise the strategy by it. A new strategy that adds modules adds its line here.
LORA_PREFIX = "lora_"
PREFIX_TUNING_PREFIX = "prefix_"
ADAPTER_PREFIX = "adapter_"
ADDED_PREFIXES = {"lora": LORA_PREFIX, "prefix-tuning": PREFIX_TUNING_PREFIX, "adapters": ADAPTER_PREFIX}


def has_prefix(name: str, prefixes: str | Iterable[str]) -> bool:
    """True if a component of the dotted parameter name starts with one of the prefixes."""
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    return any(part.startswith(prefixes) for part in name.split("."))


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} of {self.total:,} ({self.percent:.3f}%)"


def count_parameters(model: nn.Module) -> ParamCount:
    """Trainable and total parameters, each shared tensor counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return ParamCount(trainable, total)


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes training holds for weights, gradients and optimizer state (activations excluded)."""

    parameters: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer


def training_memory(model: nn.Module, optimizer_states: int = 2) -> TrainingMemory:
    """Accounted memory: every weight, a gradient per trainable one, AdamW's two moments per trainable one."""
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    # AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype
    return TrainingMemory(weights, grads, optimizer_states * grads)


def freeze_except(model: nn.Module, keep: Callable[[str], bool]) -> nn.Module:
    """requires_grad = keep(name) for every parameter; the task head (classifier.*) is always kept."""
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name) or name.startswith(HEAD_PREFIXES))
    return model


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def trainable_state_dict(model: nn.Module, prefixes: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """What must be saved for the task: the head and the tensors whose name has one of the prefixes.

    prefixes=None: every trainable tensor plus every tensor a strategy added (ADDED_PREFIXES), whatever its
    grad flag, so a baked prefix or a LoRA layer frozen for a while is never dropped from the file."""
    if prefixes is None:
        added = tuple(ADDED_PREFIXES.values())
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad or has_prefix(n, added)}
    prefixes = tuple(prefixes)
    return {n: p.detach() for n, p in model.named_parameters() if n.startswith(HEAD_PREFIXES) or has_prefix(n, prefixes)}


def save_trainable(model: nn.Module, path: str | Path, tensors: dict[str, torch.Tensor] | None = None,
                   metadata: dict | None = None) -> Path:
    """Write the task's tensors (trainable_state_dict, or the given ones) to one safetensors file."""
    tensors = trainable_state_dict(model) if tensors is None else tensors
    if not tensors:
        raise ValueError("nothing to save: the model has no trainable parameters")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"ftlib": json.dumps(metadata or {})}
    save_file({n: t.contiguous().cpu() for n, t in tensors.items()}, str(path), metadata=meta)
    return path


def load_trainable(model: nn.Module, path: str | Path) -> nn.Module:
    """Load tensors saved by save_trainable; unknown names or wrong shapes are errors, not silence."""
    tensors = load_file(str(path))
    own = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise KeyError(f"{path} holds tensors this model does not have: {unknown[:5]}"
                       f"{' ...' if len(unknown) > 5 else ''} (was the same strategy applied first?)")
    for name, t in tensors.items():
        if own[name].shape != t.shape:
            raise ValueError(f"{name}: saved shape {tuple(t.shape)} != model shape {tuple(own[name].shape)}")
    with torch.no_grad():
        for name, t in tensors.items():
            own[name].copy_(t)
    return model
