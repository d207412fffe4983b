"""Batches on their way into a model: move them to the device, pick the model's inputs, show progress."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def progress_bar(iterable=None, *, progress: bool = True, **kwargs):
    """A tqdm bar that redraws at most once a second: in Jupyter every redraw is ~3 kernel messages, and an
    unread backlog over ZeroMQ's limit (~5,000) is dropped, the cell's "done" signal with it (nbval hangs)."""
    return tqdm(iterable, leave=False, disable=not progress, mininterval=1.0, **kwargs)


def first_batch(loader):
    """A batch of the dataset's first example, collated as the loader would, without drawing from its sampler
    (drawing would shift the data order); None for an empty or iterable dataset."""
    ds = loader.dataset
    if isinstance(ds, torch.utils.data.IterableDataset) or not hasattr(ds, "__getitem__") or len(ds) == 0:
        return None
    return loader.collate_fn([ds[0]] if loader.batch_sampler is not None else ds[0])
