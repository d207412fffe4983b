"""One training loop for every strategy: AdamW on the groups a strategy gives, warm-up/decay, clipping,
per-epoch evaluation, early stopping that restores the best weights, callbacks, and a History."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import resume_from, save_run
from .device import autocast, get_device, set_seed
from .history import History

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
METRICS = {"accuracy": 1, "macro_f1": 1, "loss": -1}  # validation metric -> sign that makes higher better


@dataclass
class TrainState:
    """What callbacks see and may change between steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    history: History
    epoch: int = 0  # 1-based once training starts
    step: int = 0  # optimisation steps done so far
    epochs: int = 0  # epochs planned
    total_steps: int = 0  # steps planned


class Callback:
    """Hooks into `fit`; override what you need (gradual unfreezing uses on_epoch_begin/on_step_end)."""

    def on_train_begin(self, state: TrainState) -> None: ...
    def on_epoch_begin(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...

    def state_dict(self) -> dict:
        """What a checkpoint must keep of this callback (JSON-serialisable)."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def progress_bar(iterable=None, *, progress: bool = True, **kwargs):
    """A tqdm bar that redraws at most once a second: in Jupyter every redraw is ~3 kernel messages, and an
    unread backlog over ZeroMQ's limit (~5,000) is dropped, the cell's "done" signal with it (nbval hangs)."""
    return tqdm(iterable, leave=False, disable=not progress, mininterval=1.0, **kwargs)


def param_groups(model: nn.Module, weight_decay: float = 0.01, params: Iterable | None = None) -> list[dict]:
    """Two AdamW groups: decay for weights, none for biases and LayerNorm weights.

    Every parameter goes in, trainable or not: AdamW skips tensors whose .grad is None, so a layer
    unfrozen later is updated from then on (an optimizer built from only the trainable tensors never sees it).
    """
    named = list(params) if params is not None else list(model.named_parameters())
    decay = [p for n, p in named if not n.endswith(NO_DECAY)]
    no_decay = [p for n, p in named if n.endswith(NO_DECAY)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_warmup_decay(warmup: float = 0.1) -> Callable[[int, int], float]:
    """LR multiplier: linear warm-up over the first `warmup` fraction of steps, then linear decay to 0."""
    def schedule(step: int, total: int) -> float:
        w = max(1, int(total * warmup))
        return (step + 1) / w if step < w else max(0.0, (total - step) / max(1, total - w))
    return schedule


def move(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean of per-class F1, so a majority class cannot hide a weak one).

    Macro-F1 averages over the classes present (in the labels or the predictions), as scikit-learn does:
    a class that never occurs and is never predicted has no F1 to count."""
    f1s = []
    for c in range(num_labels):
        tp = ((preds == c) & (labels == c)).sum().item()
        fp = ((preds == c) & (labels != c)).sum().item()
        fn = ((preds != c) & (labels == c)).sum().item()
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": (preds == labels).float().mean().item(), "macro_f1": sum(f1s) / max(len(f1s), 1)}


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device | None = None, progress: bool = False, accelerator=None):
    """(logits (N, C), labels (N,)) over a loader, in eval mode (no dropout), restoring the mode after.

    Under DDP each process sees a shard; gather_for_metrics collects every example exactly once (the
    sampler pads the last shard with repeats, which it drops)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in progress_bar(loader, desc="eval", progress=progress):
        batch = move(batch, device)
        with autocast(device):
            out = model(**model_inputs(batch)).float()  # (B, C)
        target = batch["labels"]
        if accelerator is not None:
            out, target = accelerator.gather_for_metrics((out, target))
        logits.append(out)
        labels.append(target)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, loader, device: torch.device | None = None, progress: bool = False,
             accelerator=None) -> dict:
    """loss, accuracy, macro_f1 and n over a whole loader."""
    logits, labels = predict(model, loader, device, progress, accelerator)
    out = classification_metrics(logits.argmax(-1), labels, logits.shape[-1])
    return {"loss": F.cross_entropy(logits, labels).item(), **out, "n": len(labels)}


def _dataset_labels(loader) -> Sequence[int] | None:
    """The labels of a loader's dataset when it exposes them (make_loader's does), else None."""
    if loader is None:
        return None
    ds = getattr(loader.dataset, "ds", loader.dataset)
    return getattr(ds, "labels", None)


def _check_labels(labels: torch.Tensor, num_labels: int) -> None:
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(f"labels must be in 0..{num_labels - 1} for a {num_labels}-class head, "
                         f"got values {sorted(set(labels.tolist()))[:5]}")


def uses_feature_cache(model: nn.Module) -> bool:
    """True for a frozen, eval-mode encoder: its features never change, so compute them once."""
    encoder = getattr(model, "encoder", None)
    return bool(getattr(model, "keep_encoder_eval", False) and encoder is not None
                and not any(p.requires_grad for p in encoder.parameters()))


@torch.no_grad()
def encode_all(model: nn.Module, loader, device: torch.device, progress: bool = True):
    """Pooled features (N, H) and labels (N,) for every example, in dataset order."""
    n = len(loader.dataset)
    feats, labels = None, torch.empty(n, dtype=torch.long, device=device)
    model.encoder.eval()
    for batch in progress_bar(loader, desc="caching features", progress=progress):
        if "index" not in batch:
            raise KeyError("feature caching needs batches with an 'index' key; build loaders with ftlib.data.make_loader")
        batch = move(batch, device)
        with autocast(device):
            f = model.features(**model_inputs(batch)).float()  # (B, H)
        if feats is None:
            feats = torch.empty(n, f.shape[-1], device=device)
        feats[batch["index"]], labels[batch["index"]] = f, batch["labels"]
    return feats, labels


def _cached_batches(feats, labels, batch_size: int, generator: torch.Generator):
    order = torch.randperm(len(labels), generator=generator).to(feats.device)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield {"features": feats[idx], "labels": labels[idx]}


def launched_accelerator():
    """An Accelerator when started by `accelerate launch` or torchrun with several processes, else None.

    Without CUDA it asks for CPU processes explicitly, which makes them talk over gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import Accelerator

        return Accelerator(cpu=not torch.cuda.is_available())
    return None


def end_distributed() -> None:
    """Destroy the process group before exit: gloo's threads left running at exit abort the process (SIGABRT)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def fit(
    model: nn.Module,
    train_loader,
    val_loader=None,
    *,
    epochs: int = 2,
    lr: float = 5e-5,
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

    Under `accelerate launch` (or with an Accelerator passed in) the same loop runs data-parallel:
    the model is wrapped in DDP, each process sees its shard, and evaluation gathers every example once.
    With `checkpoint_dir`, a checkpoint is written after every epoch; `resume=True` continues from it.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum must be a positive int, got {grad_accum!r}")
    if len(train_loader.dataset) == 0:
        raise ValueError("the training set is empty")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    num_labels = getattr(model, "num_labels", None)
    for loader in (train_loader, val_loader):
        labels = _dataset_labels(loader)
        if num_labels is not None and labels is not None:
            _check_labels(torch.as_tensor(labels), num_labels)  # before any update, not at the bad batch
    accelerator = accelerator or launched_accelerator()
    distributed = accelerator is not None and accelerator.num_processes > 1
    device = accelerator.device if accelerator else torch.device(device) if device is not None else get_device()
    set_seed(seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(groups if groups is not None else param_groups(model, weight_decay), lr=lr)
    if not any(p.requires_grad for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("no parameter in the optimizer requires grad: apply a strategy first")
    cached = uses_feature_cache(model) and not distributed  # each process would cache only its shard
    net = model
    if distributed:
        if any(getattr(cb, "changes_trainable", False) for cb in callbacks):
            raise ValueError("callbacks that change which tensors train (gradual unfreezing) cannot run under DDP: "
                             "DDP fixes the set of synchronised tensors when it wraps the model")
        net = accelerator.prepare_model(model)  # DDP: gradients are averaged across processes in backward
        train_loader = accelerator.prepare_data_loader(train_loader)
        val_loader = accelerator.prepare_data_loader(val_loader) if val_loader is not None else None
    steps_per_epoch = math.ceil(len(train_loader) / grad_accum)  # optimizer steps this process takes
    total = epochs * steps_per_epoch
    schedule = schedule or linear_warmup_decay()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule(s, total))
    state = TrainState(model, optimizer, scheduler, History(), epochs=epochs, total_steps=total)
    run = {"best": -math.inf, "bad_epochs": 0, "best_weights": None, "stopped": False}
    generators = {"cache": torch.Generator().manual_seed(seed)}
    if getattr(train_loader, "generator", None) is not None:
        generators["loader"] = train_loader.generator
    first = 1
    if resume:
        first = resume_from(checkpoint_dir, state, run, generators, callbacks) + 1
    for cb in callbacks:
        cb.on_train_begin(state)
    feats = None
    for epoch in range(first, epochs + 1):
        if run["stopped"]:
            break
        state.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_begin(state)
        t0, losses, seen = time.perf_counter(), [], 0
        if cached and feats is None:
            feats, labels = encode_all(model, train_loader, device, progress)
        batches = _cached_batches(feats, labels, train_loader.batch_size, generators["cache"]) if cached \
            else train_loader
        n_batches = len(train_loader)
        bar = progress_bar(batches, total=n_batches, desc=f"epoch {epoch}/{epochs}", progress=progress)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            ts = time.perf_counter()
            batch = move(batch, device)
            sync = (i + 1) % grad_accum == 0 or i + 1 == n_batches  # step after every grad_accum batches
            with net.no_sync() if distributed and not sync else contextlib.nullcontext():
                with autocast(device):
                    logits = model.head(batch["features"]) if cached else net(**model_inputs(batch))  # (B, C)
                    _check_labels(batch["labels"], logits.shape[-1])
                    loss = F.cross_entropy(logits.float(), batch["labels"])
                (loss / grad_accum).backward()
            losses.append(loss.item())
            seen += len(batch["labels"])
            state.history.step_loss.append(losses[-1])
            if sync:
                if max_grad_norm:
                    nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
            state.history.step_seconds.append(time.perf_counter() - ts)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)  # drawn at the next timed redraw
            if sync:
                for cb in callbacks:
                    cb.on_step_end(state)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": sum(losses) / len(losses), "seconds": seconds,
               "examples_per_second": seen / seconds, "lr": scheduler.get_last_lr()[0]}
        if val_loader is not None:
            found = evaluate(net, val_loader, device, accelerator=accelerator if distributed else None)
            row.update({f"val_{k}": v for k, v in found.items() if k != "n"})
        state.history.epochs.append(row)
        for cb in callbacks:
            cb.on_epoch_end(state)
        if val_loader is not None:
            score = METRICS[metric] * row[f"val_{metric}"]  # higher is better
            if score > run["best"]:
                run.update(best=score, bad_epochs=0, best_weights=copy.deepcopy(model.state_dict()))
                state.history.best_epoch = epoch
            else:
                run["bad_epochs"] += 1
                run["stopped"] = patience is not None and run["bad_epochs"] >= patience
        if checkpoint_dir is not None and (accelerator is None or accelerator.is_main_process):
            save_run(checkpoint_dir, state, run, generators, callbacks)
        if distributed:
            accelerator.wait_for_everyone()
    if run["best_weights"] is not None:
        model.load_state_dict(run["best_weights"])
    model.eval()
    return state.history
