"""One training loop for every strategy: forward, backward, clipping, the optimizer step and the schedule.

Everything else is a callback with its own file: early stopping that restores the best weights
(ftlib.early_stopping), crash-safe checkpoints (ftlib.checkpointing), the feature cache of a frozen
encoder (ftlib.feature_cache), gradual unfreezing. Groups and schedules come from ftlib.optim.
Evaluation (ftlib.evaluation) runs after every epoch; ftlib.distributed starts and ends DDP runs.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .batches import MODEL_INPUTS, first_batch, model_inputs, move, progress_bar
from .callbacks import Callback, TrainState, call
from .checkpoint import peak_lr as checkpoint_lr
from .checkpoint import read_meta
from .checkpointing import Checkpointing
from .device import autocast, get_device, grad_scaler, set_seed
from .distributed import end_distributed, launched_accelerator
from .early_stopping import METRICS, EarlyStopping
from .evaluation import classification_metrics, evaluate, predict
from .feature_cache import FeatureCache, encode_all, uses_feature_cache
from .history import History
from .optim import NO_DECAY, head_lr, linear_warmup_decay, param_groups
from .strategy_tag import strategy_tag

__all__ = [  # names other modules and notebooks import from here (several now live elsewhere)
    "MODEL_INPUTS", "METRICS", "NO_DECAY", "Callback", "TrainState", "classification_metrics", "encode_all",
    "end_distributed", "evaluate", "fit", "launched_accelerator", "linear_warmup_decay", "model_inputs", "move",
    "param_groups", "predict", "progress_bar", "uses_feature_cache",
]


# --- checks before anything trains ------------------------------------------------------------------------


def _check_labels(labels: torch.Tensor, num_labels: int) -> None:
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(f"labels must be in 0..{num_labels - 1} for a {num_labels}-class head, "
                         f"got values {sorted(set(labels.tolist()))[:5]}")


def _check_loader(loader, which: str, num_labels: int | None) -> None:
    """Labelled dict batches with labels the head can predict; checked up front, not at the bad batch."""
    if loader is None:
        return
    batch = first_batch(loader)
    fix = "build the loader with ftlib.data.make_loader from a labelled dataset (ftlib.data.from_lists(texts, labels))"
    if batch is not None and not isinstance(batch, Mapping):
        raise TypeError(f"the {which} loader's batches must be dicts (input_ids, attention_mask, labels), "
                        f"got {type(batch).__name__}: {fix}")
    if batch is not None and "labels" not in batch:
        raise ValueError(f"the {which} loader's batches have no 'labels' (keys: {sorted(batch)}); fit trains "
                         f"and validates on labelled data: {fix}")
    ds = getattr(loader.dataset, "ds", loader.dataset)
    if num_labels is not None and getattr(ds, "labels", None) is not None:
        _check_labels(torch.as_tensor(ds.labels), num_labels)


def _check_epochs(epochs) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral):
        raise TypeError(f"epochs must be a whole number of passes over the data (an int), got {epochs!r}: "
                        "e.g. epochs=2")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    return int(epochs)


def _peak_lr(model: nn.Module, lr, resume_from: Path | None) -> float:
    """lr if given; else the recipe rate of the strategy the model carries; else the resumed run's."""
    if lr is not None:
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}: e.g. lr=5e-05")
        return float(lr)
    tag = strategy_tag(model)
    if tag is not None:
        from .strategies import get_recipe  # the registry imports strategy modules that import this one

        try:
            return get_recipe(tag.name).lr
        except ValueError:
            why = f"the model carries strategy {tag.name!r}, which has no recipe in ftlib.strategies"
    else:
        why = "the model carries no strategy (no ftlib apply_* verb was used on it)"
    if resume_from is not None:
        return checkpoint_lr(read_meta(resume_from))  # the checkpoint restores the real rates anyway
    raise ValueError(f"fit needs a learning rate: {why}; pass lr=, e.g. fit(..., lr=5e-05) for full "
                     "fine-tuning, or apply a strategy so fit uses its recipe rate")


def _adamw(model: nn.Module, groups, weight_decay: float, lr, resume_from: Path | None) -> torch.optim.AdamW:
    """AdamW over the given groups (default: ftlib.optim.param_groups), refused when nothing in them trains."""
    groups = list(groups) if groups is not None else param_groups(model, weight_decay)
    for g in groups:  # the caller's dicts, as AdamW keeps them (it adds initial_lr to them)
        if isinstance(g, dict) and not isinstance(g["params"], list | tuple):
            g["params"] = list(g["params"])  # a generator would be spent by the check below
    if not any(p.requires_grad for g in groups for p in (g["params"] if isinstance(g, dict) else [g])):
        raise ValueError("no parameter in the optimizer requires grad: apply a strategy first")
    return torch.optim.AdamW(groups, lr=_peak_lr(model, lr, resume_from))


def _check_arguments(model, train_loader, val_loader, epochs, grad_accum, metric, resume, checkpoint_dir) -> int:
    """Every bad argument refused before anything changes; returns epochs as an int."""
    epochs = _check_epochs(epochs)
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum must be a positive int, got {grad_accum!r}")
    if len(train_loader.dataset) == 0:
        raise ValueError("the training set is empty")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    _check_loader(train_loader, "train", getattr(model, "num_labels", None))
    _check_loader(val_loader, "validation", getattr(model, "num_labels", None))
    return epochs


def _check_thawing(model: nn.Module, callbacks: Sequence[Callback]) -> None:
    """Gradual unfreezing without a thawing callback would silently train the head alone."""
    tag = strategy_tag(model)
    if tag is not None and tag.name == "gradual-unfreezing" and \
            not any(getattr(cb, "changes_trainable", False) for cb in callbacks):
        raise ValueError("the model was prepared for gradual unfreezing but no callback thaws it, so only the head "
                         "would train: pass callbacks=[GradualUnfreezing(...)] (ftlib.gradual_unfreezing), or "
                         "get_recipe('gradual-unfreezing').callbacks(model, total_steps)")


# --- the loop ------------------------------------------------------------------------------------------------


def train_epoch(state: TrainState, net: nn.Module, max_grad_norm: float | None, progress: bool) -> dict:
    """One pass over state.batches, an optimizer step every grad_accum batches; returns the epoch's row."""
    model, optimizer, scaler, dev = state.model, state.optimizer, state.scaler, state.device
    n, accum = len(state.train_loader), state.grad_accum
    t0, losses, seen, window, busy = time.perf_counter(), [], 0, [], 0.0
    bar = progress_bar(state.batches, total=n, desc=f"epoch {state.epoch}/{state.epochs}", progress=progress)
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar):
        ts, batch = time.perf_counter(), move(batch, dev)
        size = min(accum, n - i // accum * accum)  # batches in this step: the epoch's last window may be short
        sync = len(window) + 1 == size
        with net.no_sync() if state.accelerator is not None and not sync else contextlib.nullcontext():
            with autocast(dev):
                logits = model.head(batch["features"]) if "features" in batch else net(**model_inputs(batch))  # (B, C)
            _check_labels(batch["labels"], logits.shape[-1])
            loss = F.cross_entropy(logits.float(), batch["labels"])
            scaler.scale(loss / size).backward()  # the window's mean loss, whatever its size
        window.append(loss.item())
        seen += len(batch["labels"])
        if sync:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            if max_grad_norm:
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            state.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.history.step_loss.append(sum(window) / len(window))
            state.history.step_seconds.append(busy + time.perf_counter() - ts)
            losses, window, busy = losses + window, [], 0.0
            bar.set_postfix(loss=f"{state.history.step_loss[-1]:.3f}", refresh=False)  # drawn at the next redraw
            call(state.callbacks, "on_step_end", state)
        else:
            busy += time.perf_counter() - ts
    seconds = time.perf_counter() - t0
    return {"epoch": state.epoch, "train_loss": sum(losses) / len(losses), "seconds": seconds,
            "examples_per_second": seen / seconds, "lr": head_lr(optimizer, model)}


def fit(
    model: nn.Module,
    train_loader,
    val_loader=None,
    *,
    epochs: int = 2,
    lr: float | None = None,
    groups: Sequence[dict] | None = None,
    weight_decay: float = 0.01,
    schedule: Callable[[int, int], float] | None = None,
    max_grad_norm: float | None = 1.0,
    callbacks: Sequence[Callback] = (),
    patience: int | None = None,
    metric: str = "accuracy",
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    grad_accum: int = 1,
    accelerator=None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> History:
    """Train `model` and return its History; with a val_loader, the best epoch's weights are kept.

    `lr=None` takes the recipe rate of the strategy the model carries (ftlib.strategy_tag), else is refused.
    `seed` seeds dropout, the feature cache's order and (under DDP, as seed + rank) each process; the data
    order comes from the loader's own generator, and the head's initial weights from build_classifier(seed=).
    Under `accelerate launch` (or with an Accelerator passed in) the same loop runs data-parallel:
    the model is wrapped in DDP, each process sees its shard, and evaluation gathers every example once.
    With `checkpoint_dir`, a checkpoint is written after every epoch; `resume=True` continues from it.
    """
    epochs = _check_arguments(model, train_loader, val_loader, epochs, grad_accum, metric, resume, checkpoint_dir)
    _check_thawing(model, callbacks)
    accelerator = accelerator or launched_accelerator()
    distributed = accelerator is not None and accelerator.num_processes > 1
    device = accelerator.device if accelerator else torch.device(device) if device is not None else get_device()
    set_seed(seed + (accelerator.process_index if distributed else 0))  # each process its own dropout stream
    model.to(device).train()
    optimizer = _adamw(model, groups, weight_decay, lr, Path(checkpoint_dir) if resume else None)
    net = model
    if distributed:  # DDP: gradients are averaged across processes in backward; each process sees a shard
        if any(getattr(cb, "changes_trainable", False) for cb in callbacks):
            raise ValueError("callbacks that change which tensors train (gradual unfreezing) cannot run under DDP: "
                             "DDP fixes the set of synchronised tensors when it wraps the model")
        net, train_loader = accelerator.prepare_model(model), accelerator.prepare_data_loader(train_loader)
        val_loader = accelerator.prepare_data_loader(val_loader) if val_loader is not None else None
    total = epochs * math.ceil(len(train_loader) / grad_accum)  # optimizer steps this process takes
    schedule = schedule or linear_warmup_decay()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, total))
    generators = {"cache": torch.Generator().manual_seed(seed)}
    if getattr(train_loader, "generator", None) is not None:
        generators["loader"] = train_loader.generator
    checkpointing = Checkpointing(checkpoint_dir) if checkpoint_dir is not None else None
    callbacks = [*callbacks, *([] if distributed else [FeatureCache(generators["cache"], progress)]),
                 *([EarlyStopping(metric, patience)] if val_loader is not None else []),
                 *([checkpointing] if checkpointing else [])]  # in this order at every hook
    state = TrainState(model, optimizer, scheduler, History(), epochs=epochs, total_steps=total,
                       grad_accum=grad_accum, device=device, train_loader=train_loader, generators=generators,
                       callbacks=callbacks, accelerator=accelerator if distributed else None,
                       scaler=grad_scaler(device))
    first = checkpointing.restore(state) + 1 if resume else 1
    call(callbacks, "on_train_begin", state)
    for epoch in range(first, epochs + 1):
        if state.stop:
            break
        state.epoch, state.batches = epoch, train_loader
        call(callbacks, "on_epoch_begin", state)  # the feature cache may swap in cached batches
        row = train_epoch(state, net, max_grad_norm, progress)
        if val_loader is not None:
            found = evaluate(net, val_loader, device, accelerator=state.accelerator)
            row.update({f"val_{k}": v for k, v in found.items() if k != "n"})
        state.history.epochs.append(row)
        call(callbacks, "on_epoch_end", state)  # early stopping, then the checkpoint
        if distributed:
            accelerator.wait_for_everyone()
    call(callbacks, "on_train_end", state)  # early stopping restores the best weights
    model.eval()
    return state.history
