"""The feature cache: a frozen, eval-mode encoder gives the same features every epoch, so compute them once.

The cache is valid only while the encoder is frozen and every row the loader yields is written. A callback
that thaws part of the encoder (gradual unfreezing on top of feature extraction) makes it stale: from that
batch on, the epoch's remaining rows go through the whole model, and the cache is rebuilt once the
encoder is frozen again.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .batches import first_batch, model_inputs, move, progress_bar
from .callbacks import Callback, TrainState
from .device import autocast


def uses_feature_cache(model: nn.Module) -> bool:
    """True for a frozen, eval-mode encoder: its features never change, so compute them once."""
    encoder = getattr(model, "encoder", None)
    return bool(getattr(model, "keep_encoder_eval", False) and encoder is not None
                and not any(p.requires_grad for p in encoder.parameters()))


def loader_rows(loader) -> list[int] | None:
    """The dataset rows one pass of `loader` draws from, when the sampler tells without drawing; else None."""
    sampler = loader.sampler
    indices = getattr(sampler, "indices", None)  # SubsetRandomSampler
    if indices is not None:
        return sorted({int(i) for i in indices})
    if len(sampler) == len(loader.dataset):  # SequentialSampler, RandomSampler: every row
        return list(range(len(loader.dataset)))
    return None


@torch.no_grad()
def encode_rows(model: nn.Module, loader, device: torch.device, progress: bool = True):
    """(rows (M,), features (M, H), labels (M,)) for every row `loader` draws, sorted by row, each once.

    A drop_last loader skips up to batch_size - 1 rows per pass: they are encoded too (filled), so no row
    is left unwritten. A sampler that hides its rows cannot be filled, and is refused with drop_last."""
    rows = loader_rows(loader)
    if rows is None and getattr(loader, "drop_last", False):
        raise ValueError(f"cannot cache features: with drop_last=True and a {type(loader.sampler).__name__} the "
                         "skipped rows are unknown; build the loader with drop_last=False or a SubsetRandomSampler")
    model.encoder.eval()
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def encode(batches, desc: str) -> None:
        for batch in progress_bar(batches, desc=desc, progress=progress):
            if "index" not in batch:
                raise KeyError("feature caching needs batches with an 'index' key; "
                               "build loaders with ftlib.data.make_loader")
            batch = move(batch, device)
            with autocast(device):
                f = model.features(**model_inputs(batch)).float()  # (B, H)
            found.append((batch["index"], f, batch["labels"]))

    encode(loader, "caching features")
    missing = sorted(set(rows or ()) - {int(i) for index, _, _ in found for i in index})
    if missing:  # rows drop_last skipped this pass
        encode(DataLoader(Subset(loader.dataset, missing), batch_size=loader.batch_size or 1,
                          collate_fn=loader.collate_fn), "caching skipped rows")
    index, feats, labels = (torch.cat(parts) for parts in zip(*found, strict=True))
    order = torch.argsort(index, stable=True)
    index, feats, labels = index[order], feats[order], labels[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]  # a sampler drawing with replacement repeats rows: keep one of each
    return index[first], feats[first], labels[first]


def encode_all(model: nn.Module, loader, device: torch.device, progress: bool = True):
    """Pooled features (M, H) and labels (M,) for every row the loader draws (all N for a plain loader), by row."""
    _, feats, labels = encode_rows(model, loader, device, progress)
    return feats, labels


class FeatureCache(Callback):
    """While the encoder is frozen and in eval mode, each epoch trains the head on cached features.

    fit adds it (except under DDP, where each process would cache only its shard); it decides at every
    epoch and every batch, not once per run."""

    def __init__(self, generator: torch.Generator, progress: bool = True):
        self.generator, self.progress = generator, progress  # the generator shuffles the cached rows
        self.rows = self.feats = self.labels = None
        self.loader_fits: bool | None = None  # whether the loader's batches can be cached (checked once)

    def usable(self, state: TrainState) -> bool:
        """A frozen eval-mode encoder, and a loader whose rows are known and whose batches carry an 'index'.

        When the loader does not fit, training runs uncached: slower, never wrong."""
        if not uses_feature_cache(state.model):
            return False
        if self.loader_fits is None:
            loader = state.train_loader
            batch = first_batch(loader) if getattr(loader, "batch_size", None) is not None else None
            self.loader_fits = (batch is not None and "index" in batch
                                and (loader_rows(loader) is not None or not loader.drop_last))
        return self.loader_fits

    def on_epoch_begin(self, state: TrainState) -> None:
        if not self.usable(state):
            self.rows = self.feats = self.labels = None  # stale once anything in the encoder trains
            return
        if self.feats is None:
            self.rows, self.feats, self.labels = encode_rows(state.model, state.train_loader, state.device,
                                                             self.progress)
        state.batches = self.batches(state)

    def batches(self, state: TrainState):
        """As many batches as the loader gives: cached ones, then live ones if the encoder thaws mid-epoch."""
        loader = state.train_loader
        n, size = len(self.labels), loader.batch_size
        end = n - n % size if loader.drop_last else n
        order = torch.randperm(n, generator=self.generator).to(self.feats.device)
        for i in range(0, end, size):
            if not uses_feature_cache(state.model):  # a callback thawed part of the encoder after the last step
                rest = self.rows[order[i:end]].tolist()
                self.rows = self.feats = self.labels = None
                yield from DataLoader(Subset(loader.dataset, rest), batch_size=size, collate_fn=loader.collate_fn)
                return
            idx = order[i:i + size]
            yield {"features": self.feats[idx], "labels": self.labels[idx]}
