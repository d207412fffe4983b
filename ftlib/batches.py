"""Batches on their way into a model: move them to the device, pick the model's inputs, show progress."""

from __future__ import annotations

import functools

import torch
from tqdm.auto import tqdm

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


@functools.cache
def _notebook_bar() -> type | None:
    """In Jupyter, a tqdm widget that leaves its final state as one line of text when it closes, so a saved
    notebook reads "100%| 32/32" instead of the widget's "0%|" fallback (docs/progress-bars.md); else None."""
    from tqdm.notebook import tqdm as notebook_tqdm
    if not issubclass(tqdm, notebook_tqdm):
        return None
    from IPython.display import display

    class NotebookBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, display=False, **kwargs)
            self._handle = None if self.disable else display(self.container, display_id=True)

        def close(self):
            handle, self._handle = getattr(self, "_handle", None), None
            super().close()
            if handle is not None:
                handle.update({"text/plain": self.format_meter(**{**self.format_dict, "ascii": True})}, raw=True)

    return NotebookBar


def progress_bar(iterable=None, *, progress: bool = True, **kwargs):
    """A tqdm bar that redraws at most once a second: in Jupyter every redraw is ~3 kernel messages, and an
    unread backlog over ZeroMQ's limit (~5,000) is dropped, the cell's "done" signal with it (nbval hangs)."""
    return (_notebook_bar() or tqdm)(iterable, leave=False, disable=not progress, mininterval=1.0, **kwargs)


def first_batch(loader):
    """A batch of the dataset's first example, collated as the loader would, without drawing from its sampler
    (drawing would shift the data order); None for an empty or iterable dataset."""
    ds = loader.dataset
    if isinstance(ds, torch.utils.data.IterableDataset) or not hasattr(ds, "__getitem__") or len(ds) == 0:
        return None
    return loader.collate_fn([ds[0]] if loader.batch_sampler is not None else ds[0])
