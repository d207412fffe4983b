"""Early stopping: keep the best epoch's weights by a validation metric, stop after `patience` worse epochs."""

from __future__ import annotations

import math

import torch

from .callbacks import Callback, TrainState

METRICS = {"accuracy": 1, "macro_f1": 1, "loss": -1}  # validation metric -> sign that makes higher better


class EarlyStopping(Callback):
    """At each epoch end, compare `val_<metric>` with the best so far; at train end, restore the best weights."""

    def __init__(self, metric: str = "accuracy", patience: int | None = None):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be None (never stop early) or a positive int, got {patience!r}")
        self.metric, self.patience = metric, patience
        self.best, self.bad_epochs = -math.inf, 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history.epochs[-1]
        if f"val_{self.metric}" not in row:
            return
        score = METRICS[self.metric] * row[f"val_{self.metric}"]  # higher is better
        if score > self.best:
            self.best, self.bad_epochs = score, 0
            self.best_weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
            state.history.best_epoch = state.epoch
        else:
            self.bad_epochs += 1
            state.stop = state.stop or (self.patience is not None and self.bad_epochs >= self.patience)

    def on_train_end(self, state: TrainState) -> None:
        if self.best_weights is not None:
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.best_weights or {})

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.best_weights = dict(tensors) or None
