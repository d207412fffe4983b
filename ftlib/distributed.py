"""Data-parallel runs: the Accelerator that `accelerate launch` or torchrun asks for, and a clean exit."""

from __future__ import annotations

import os

import torch


def launched_accelerator():
    """An Accelerator when started by `accelerate launch` or torchrun with several processes, else None.

    Without CUDA it asks for CPU processes explicitly, which makes them talk over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        return Accelerator(cpu=not torch.cuda.is_available())
    return None


def end_distributed(accelerator=None) -> None:
    """Destroy the process group before exit: gloo's threads left running at exit abort the process (SIGABRT).

    Given the run's Accelerator, its end_training() does it (and closes its trackers)."""
    if accelerator is not None:
        accelerator.end_training()
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
