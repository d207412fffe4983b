"""Checkpointing as a callback: after every epoch, a crash-safe checkpoint (layout: ftlib.checkpoint)."""

from __future__ import annotations

from pathlib import Path

import torch

from .callbacks import Callback, TrainState
from .checkpoint import pack_ranks, resume_from, rng_state, save_run


def gather_objects(obj, accelerator=None) -> list:
    """[obj of rank 0, obj of rank 1, ...]: every process calls it (a collective under DDP)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [obj]
    out = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(out, obj)
    return out


class Checkpointing(Callback):
    """Save model, optimizer, schedule, callbacks and every process's random state after each epoch."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def restore(self, state: TrainState) -> int:
        """Continue from the newest checkpoint in the folder; returns the last epoch it finished."""
        return resume_from(self.folder, state)

    def on_epoch_end(self, state: TrainState) -> None:
        rng = gather_objects(rng_state(state.generators), state.accelerator)  # each rank its own dropout stream
        if state.rank == 0:
            save_run(self.folder, state, pack_ranks(rng))
