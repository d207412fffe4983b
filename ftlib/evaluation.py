"""Evaluation: logits over a loader in eval mode, and the metrics the course reports (accuracy, macro-F1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batches import model_inputs, move, progress_bar
from .device import autocast


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
