"""Gradual unfreezing (Howard & Ruder 2018, ULMFiT): train the head first, then thaw layers top-down.

Pitfall in the reference sketch: it builds the optimizer from the trainable parameters only, so the
layers it unfreezes later are never updated. `ftlib.train.param_groups` gives AdamW every tensor up front;
AdamW skips those without gradients, so each layer starts learning the moment it is unfrozen.
"""

from __future__ import annotations

import math

from torch import nn

from .callbacks import Callback, TrainState
from .lifecycle import prepare
from .models import embeddings, encoder_layers
from .params import freeze_except
from .strategy_tag import tag_strategy


def apply_gradual_unfreezing(model: nn.Module) -> nn.Module:
    """Freeze everything but the head; the GradualUnfreezing callback thaws the rest during fit."""
    encoder_layers(model)  # fail now, clearly, if the model has no layers to unfreeze
    prepare(model, "gradual-unfreezing")  # refuses a model carrying LoRA, a prefix or adapters
    return tag_strategy(freeze_except(model, lambda name: False), "gradual-unfreezing")


def unfreezing_order(model: nn.Module) -> list[nn.Module]:
    """Top layer first, embeddings last: the general features near the input change least."""
    return [*reversed(encoder_layers(model)), embeddings(model)]


def even_interval(blocks: int, horizon: int, per_stage: int = 1) -> int:
    """Epochs or steps between stages that spread every block over `horizon`, head-only time included."""
    return max(1, horizon // (math.ceil(blocks / per_stage) + 1))


class GradualUnfreezing(Callback):
    """Thaw `per_stage` blocks after `start` epochs (or steps) of head-only training, then every `every`.

    With `evenly=True`, `every` and `start` are worked out at on_train_begin from the run fit plans
    (TrainState.epochs, or TrainState.total_steps: optimizer steps, whatever grad_accum is) so that every
    block thaws, evenly spaced; the values given are only a preview.
    """

    changes_trainable = True  # fit refuses it under DDP, which fixes the synchronised tensors up front

    def __init__(self, every: int = 1, unit: str = "epoch", per_stage: int = 1, start: int = 1,
                 evenly: bool = False):
        if unit not in ("epoch", "step"):
            raise ValueError(f"unit must be 'epoch' or 'step', got {unit!r}")
        for name, value in (("every", every), ("per_stage", per_stage), ("start", start)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.every, self.unit, self.per_stage, self.start, self.evenly = every, unit, per_stage, start, evenly
        self.unfrozen = 0  # blocks thawed so far (layers top-down, then the embeddings)
        self.log: list[tuple[int, int]] = []  # (epochs or steps done, blocks unfrozen) at each stage

    def unfreeze(self, model: nn.Module) -> int:
        """Thaw the next `per_stage` blocks top-down; returns how many are unfrozen now."""
        order = unfreezing_order(model)
        for block in order[self.unfrozen:self.unfrozen + self.per_stage]:
            block.requires_grad_(True)
        self.unfrozen = min(len(order), self.unfrozen + self.per_stage)
        return self.unfrozen

    def state_dict(self) -> dict:
        return {"unfrozen": self.unfrozen, "log": self.log}

    def load_state_dict(self, state: dict) -> None:
        self.unfrozen, self.log = state["unfrozen"], [tuple(x) for x in state["log"]]

    def on_train_begin(self, state: TrainState) -> None:
        order = unfreezing_order(state.model)  # clear error for a model without layers
        horizon = state.epochs if self.unit == "epoch" else state.total_steps
        if self.evenly:
            self.every = self.start = even_interval(len(order), horizon, self.per_stage)
        if self.start >= horizon:
            raise ValueError(f"this schedule never unfreezes anything: the first stage comes after {self.start} "
                             f"{self.unit}s but training lasts {horizon}; lower start or train longer")

    def _tick(self, state: TrainState, done: int) -> None:
        if done >= self.start and (done - self.start) % self.every == 0:
            before = self.unfrozen
            if self.unfreeze(state.model) > before:  # a tick after everything is thawed is not a stage
                self.log.append((done, self.unfrozen))

    def on_epoch_begin(self, state: TrainState) -> None:
        if self.unit == "epoch":
            self._tick(state, state.epoch - 1)  # epochs completed so far

    def on_step_end(self, state: TrainState) -> None:
        if self.unit == "step":
            self._tick(state, state.step)
