"""What `fit` shares with its callbacks: a typed TrainState and the hooks a Callback may override.

Early stopping, checkpointing, the feature cache and gradual unfreezing are all callbacks; `fit` itself
only runs forward, backward, clipping, the optimizer step and the schedule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .history import History


@dataclass
class TrainState:
    """What callbacks see and may change between steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    history: History
    epoch: int = 0  # 1-based once training starts
    step: int = 0  # optimizer steps done so far (one per grad_accum batches)
    epochs: int = 0  # epochs planned
    total_steps: int = 0  # optimizer steps planned: epochs * ceil(batches per epoch / grad_accum)
    grad_accum: int = 1  # batches per optimizer step
    device: torch.device | None = None
    train_loader: object = None  # the loader fit was given (prepared for DDP when distributed)
    batches: Iterable | None = None  # what this epoch iterates: the loader, or the feature cache's batches
    generators: dict[str, torch.Generator] = field(default_factory=dict)  # random streams a checkpoint keeps
    callbacks: Sequence = ()  # every callback of the run, fit's own included (checkpoints save their state)
    accelerator: object = None  # an accelerate.Accelerator under DDP, else None
    stop: bool = False  # set by a callback (early stopping) to end training after this epoch
    scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling; disabled elsewhere

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1


class Callback:
    """Hooks into `fit`; override what you need (gradual unfreezing uses on_epoch_begin/on_step_end)."""

    def on_train_begin(self, state: TrainState) -> None: ...
    def on_epoch_begin(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict:
        """What a checkpoint must keep of this callback (JSON-serialisable)."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors a checkpoint must keep of this callback (e.g. early stopping's best weights)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...


def call(callbacks: Sequence[Callback], hook: str, state: TrainState) -> None:
    """Run one hook on every callback, in order."""
    for cb in callbacks:
        getattr(cb, hook)(state)
